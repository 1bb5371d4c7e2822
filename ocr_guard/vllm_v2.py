"""The no-repeat n-gram guard DeepSeek-OCR's authors decode with, as a logits processor for vLLM's Model Runner V2.

vLLM loads it by name in every process that needs it (the front end for ``validate_params``, each worker for
``apply``)::

    vllm serve ... --logits-processors ocr_guard.vllm_v2:NoRepeatNGramGuard

It reads the same per-request arguments as DeepSeek's ``NGramPerReqLogitsProcessor`` (V1 runner only, and deleted
from vLLM 0.34), from ``SamplingParams.extra_args`` (``vllm_xargs`` over HTTP): ``ngram_size``, ``window_size``
(100 when absent) and ``whitelist_token_ids``, and refuses the same values at admission. A request without
``ngram_size`` is left alone. The rule is ``ocr_api/guard.py``'s ``banned_next_tokens``: the next token is banned
when it would complete an n-gram that already occurs among the last ``window_size`` generated tokens (never the
prompt, which holds hundreds of repeated image tokens), unless it is whitelisted.

The V2 sampler calls ``apply`` once per step for the whole batch, so the rule is tensor operations over every row at
once, on the logits' device: no Python loop over rows or over the window. Runs inside vLLM: imports only numpy,
torch and vLLM's import-light V2 interface (the same in vLLM 0.32, 0.33 and 0.34).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from vllm.v1.worker.gpu.sample.logits_processor.interface import (
    LogitsContext,
    LogitsProcessor,
    LogitsProcRequestState,
)

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.sampling_params import SamplingParams

DEFAULT_WINDOW_SIZE = 100
# The prefix comparison holds rows x window x (ngram_size - 1) booleans; past this many it is done in slices, so a
# request asking for an n-gram as long as its context costs time, never the device's memory.
COMPARISON_BUDGET = 1 << 24


def guard_arguments(params: SamplingParams) -> tuple[Any, Any, Any] | None:
    """Return a request's (ngram_size, window_size, whitelist_token_ids) as sent, or None when it asks for no guard."""
    extra = params.extra_args or {}
    ngram_size = extra.get("ngram_size")
    if ngram_size is None:
        return None
    return ngram_size, extra.get("window_size", DEFAULT_WINDOW_SIZE), extra.get("whitelist_token_ids")


class NoRepeatNGramGuard(LogitsProcessor):
    """Bans, per guarded request, every token that would repeat an n-gram of its recent output."""

    def __init__(self, vllm_config: VllmConfig, req_states: LogitsProcRequestState):
        self.req_states = req_states
        slots = req_states.max_num_reqs
        # Per request slot, on the host (to skip work and size it without a device sync) and on the device: the
        # n-gram size (0: not guarded), the window, and the whitelist padded with -1 (no token id is negative).
        self.ngram_size = np.zeros(slots, dtype=np.int64)
        self.window_size = np.zeros(slots, dtype=np.int64)
        self.whitelist = np.full((slots, 1), -1, dtype=np.int64)
        self._ngram_size_device = torch.zeros(slots, dtype=torch.int64, device=req_states.device)
        self._window_size_device = torch.zeros(slots, dtype=torch.int64, device=req_states.device)
        self._whitelist_device = torch.full((slots, 1), -1, dtype=torch.int64, device=req_states.device)
        self._staged = False

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Refuse what DeepSeek's processor refuses, in its words (the service's start-up probe relies on them)."""
        arguments = guard_arguments(sampling_params)
        if arguments is None:
            return
        ngram_size, window_size, whitelist_token_ids = arguments
        if not isinstance(ngram_size, int) or ngram_size <= 0:
            raise ValueError(f"`ngram_size` has to be a strictly positive integer, got {ngram_size}.")
        if not isinstance(window_size, int) or window_size <= 0:
            raise ValueError(f"`window_size` has to be a strictly positive integer, got {window_size}.")
        if whitelist_token_ids is not None and not isinstance(whitelist_token_ids, Iterable):
            raise ValueError(f"`whitelist_token_ids` has to be a sequence of integers, got {whitelist_token_ids}.")

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        """Set the slot's guard (or none), overwriting whatever its previous request left."""
        arguments = guard_arguments(sampling_params)
        ngram_size, window_size, whitelist = arguments if arguments is not None else (0, 0, None)
        # Only integers can equal a token id: anything else in the whitelist never matters, as in DeepSeek's set.
        allowed = sorted({token for token in whitelist or () if isinstance(token, int) and token >= 0})
        if len(allowed) > self.whitelist.shape[1]:
            wider = np.full((self.whitelist.shape[0], len(allowed)), -1, dtype=np.int64)
            wider[:, : self.whitelist.shape[1]] = self.whitelist
            self.whitelist = wider
        self.ngram_size[req_idx] = ngram_size
        self.window_size[req_idx] = window_size
        self.whitelist[req_idx] = -1
        self.whitelist[req_idx, : len(allowed)] = allowed
        self._staged = True
        return arguments is not None

    def apply_staged_writes(self) -> None:
        """Copy the slots' guards to the device (only on steps that admitted requests)."""
        if not self._staged:
            return
        device = self.req_states.device
        self._ngram_size_device = torch.from_numpy(self.ngram_size.copy()).to(device)
        self._window_size_device = torch.from_numpy(self.window_size.copy()).to(device)
        self._whitelist_device = torch.from_numpy(self.whitelist.copy()).to(device)
        self._staged = False

    def apply(self, logits: torch.Tensor, ctx: LogitsContext) -> torch.Tensor:
        """Set every banned token's logit to -inf, for all guarded rows of this step at once."""
        slots = ctx.idx_mapping_np
        guarded = self.ngram_size[slots] > 0
        if not guarded.any():
            return logits
        # The last `width` tokens of each row cover every window: no guarded row looks further back.
        width = int(min(self.window_size[slots][guarded].max(), ctx.seq_lens_upper_bound_np[guarded].max()))
        longest_prefix = int(min(self.ngram_size[slots][guarded].max() - 1, width))
        if width <= 0:
            return logits
        rows = ctx.expanded_idx_mapping.long()
        tokens, positions, lengths = self._recent_tokens(ctx, rows, width)
        ngram_size = self._ngram_size_device[rows]
        # An n-gram may start at the window's first generated token at the earliest, never in the prompt.
        earliest = torch.maximum(self.req_states.prompt_len.gpu[rows].long(), lengths - self._window_size_device[rows])
        # Column b of `tokens` is banned when the n-gram ending there starts early enough, its n-1 tokens before b
        # are the row's last n-1 tokens, and it is not whitelisted.
        starts_in_window = positions - (ngram_size[:, None] - 1) >= earliest[:, None]
        matching = _matched_suffix_lengths(tokens, longest_prefix) >= (ngram_size[:, None] - 1)
        whitelisted = (tokens[:, :, None] == self._whitelist_device[rows][:, None, :]).any(dim=2)
        banned = (ngram_size[:, None] > 0) & starts_in_window & matching & ~whitelisted
        # amin over each row's scattered values: -inf where any column naming that token is banned, else unchanged.
        # (A plain scatter of duplicate indices would keep an arbitrary one of them.)
        fill = torch.where(banned, float("-inf"), float("inf")).to(logits.dtype)
        vocabulary = logits.shape[1]
        indices = torch.where(banned, tokens, 0).clamp_(0, vocabulary - 1)
        logits.scatter_reduce_(1, indices, fill, reduce="amin", include_self=True)
        return logits

    def _recent_tokens(
        self, ctx: LogitsContext, rows: torch.Tensor, width: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return each row's (its slot in ``rows``) last ``width`` token ids, their positions in the sequence, and each
        row's length.

        A row sees its request's committed tokens (``all_token_ids[slot, :total_len]``, prompt then output) and,
        under speculative decoding, the draft tokens of the rows before it (``input_ids``), as vLLM's own bad-words
        stage reads them. Positions before the sequence's start are clamped to its first token; they are never in a
        window.
        """
        local = ctx.expanded_local_pos.long()
        committed_length = self.req_states.total_len.gpu[rows].long()
        lengths = committed_length + local
        positions = lengths[:, None] - width + torch.arange(width, device=lengths.device)[None, :]
        all_token_ids = self.req_states.all_token_ids.gpu
        committed = all_token_ids[rows[:, None], positions.clamp(min=0)].long()
        # Row r's draft at position p >= total_len is the input of row r - local + 1 + (p - total_len).
        row_index = torch.arange(rows.shape[0], device=rows.device)
        draft_row = (row_index - local + 1)[:, None] + (positions - committed_length[:, None])
        drafts = ctx.input_ids.long()[draft_row.clamp(0, rows.shape[0] - 1)]
        tokens = torch.where(positions >= committed_length[:, None], drafts, committed)
        return tokens, positions, lengths


def _matched_suffix_lengths(tokens: torch.Tensor, longest: int) -> torch.Tensor:
    """For each row and column b, how many tokens before b equal the row's last tokens, counted backwards (at most
    ``longest``): ``tokens[b - 1 - m] == tokens[-1 - m]`` for m = 0, 1, ...

    Done in slices of m that keep the comparison within COMPARISON_BUDGET elements.
    """
    rows, width = tokens.shape
    lengths = torch.zeros((rows, width), dtype=torch.int64, device=tokens.device)
    still_matching = torch.ones((rows, width), dtype=torch.bool, device=tokens.device)
    columns = torch.arange(width, device=tokens.device)
    step = max(1, COMPARISON_BUDGET // max(1, rows * width))
    for first in range(0, longest, step):
        offsets = torch.arange(first, min(longest, first + step), device=tokens.device)
        earlier = columns[:, None] - 1 - offsets[None, :]  # [width, m]: the column compared with the suffix
        suffix = tokens[:, width - 1 - offsets]  # [rows, m]
        equal = (tokens[:, earlier.clamp(min=0)] == suffix[:, None, :]) & (earlier >= 0)[None]
        differs = ~equal
        first_difference = torch.where(differs.any(dim=2), differs.to(torch.uint8).argmax(dim=2), offsets.shape[0])
        lengths += torch.where(still_matching, first_difference, 0)
        still_matching &= ~differs.any(dim=2)
    return lengths
