"""DeepSeek-OCR-2 through transformers' native classes (no remote code), on CUDA when present, else CPU.

Pages are submitted one at a time from any thread; one worker thread owns the model and runs whatever is queued
(up to ``max_batch`` pages of one resolution mode) as one ``generate()`` call, so concurrent requests share batches.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ocr_api.engines.base import (
    GUARD_UNCHECKED,
    GUARD_VERIFIED,
    POLL_S,
    RESOLUTION_MODES,
    EngineLoadError,
    EngineOutput,
    EngineRequest,
    EngineTimeout,
    EngineUnavailable,
    GuardCheck,
    GuardMissing,
    PromptTooLong,
    TextSink,
)
from ocr_api.guard import GuardSettings, banned_next_tokens
from ocr_api.interpretation import END_OF_SENTENCE
from ocr_api.profiles import DEFAULT_CHECKPOINTS, ModelProfile, layout_mismatch, profile_for_model_type

logger = logging.getLogger(__name__)


@dataclass
class _Queued:
    """A page waiting for the model, and the future its caller holds."""

    request: EngineRequest
    future: concurrent.futures.Future


class TransformersEngine:
    """Runs DeepSeek-OCR-2 with ``generate()`` on one worker thread, batching the pages queued at the time."""

    name = "transformers"
    modes = RESOLUTION_MODES  # the processor's patch count switches tiles on and off

    def __init__(
        self,
        model_name: str = "",
        device: str = "auto",
        *,
        dtype: str = "auto",
        max_model_len: int = 8192,
        timeout_s: float | None = None,
        max_batch: int = 8,
        require_guard: bool = True,
    ):
        self.model_id = model_name or DEFAULT_CHECKPOINTS["transformers"]
        self._device_setting = device
        self._dtype_setting = dtype
        self._max_model_len = max_model_len
        self._timeout_s = timeout_s
        self._max_batch = max_batch
        self._require_guard = require_guard
        self._guard = GuardCheck(GUARD_UNCHECKED, "the engine has not loaded")
        self._model: Any = None
        self._processor: Any = None
        self.profile: ModelProfile = profile_for_model_type("deepseek_ocr2")
        self.device = "cpu"
        self.whitelist_token_ids: frozenset[int] = frozenset()
        self.context_length = max_model_len
        # Pages wait in vLLM's priority order: the request's priority, then arrival (None, the stop, after all).
        self._queue: queue.PriorityQueue[tuple[float, int, _Queued | None]] = queue.PriorityQueue()
        self._arrivals = itertools.count()
        self._worker: threading.Thread | None = None

    def load(self) -> None:
        """Load processor and model; raise EngineLoadError saying what was tried when that fails."""
        import torch
        from transformers import (
            AutoConfig,
            AutoProcessor,
            DeepseekOcr2ForConditionalGeneration,
        )

        mismatch = layout_mismatch(self.name, self.model_id)
        if mismatch:
            raise EngineLoadError(mismatch)
        _log_through_the_service("transformers", "huggingface_hub")
        try:
            config = AutoConfig.from_pretrained(self.model_id)
        except (OSError, ValueError) as exc:
            raise EngineLoadError(_not_found_message(self.model_id, exc)) from None
        if config.model_type != "deepseek_ocr2":
            raise EngineLoadError(
                f"{self.model_id} is a {config.model_type!r} checkpoint; the transformers engine needs DeepSeek-OCR-2 "
                f"in transformers layout ({DEFAULT_CHECKPOINTS['transformers']})."
            )
        self.device = _resolve_device(self._device_setting, torch)
        dtype = _resolve_dtype(self._dtype_setting, self.device, torch)
        try:
            self._processor = AutoProcessor.from_pretrained(self.model_id)
            model = DeepseekOcr2ForConditionalGeneration.from_pretrained(self.model_id, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise EngineLoadError(_not_found_message(self.model_id, exc)) from None
        self._model = model.to(self.device).eval()
        self.profile = profile_for_model_type(config.model_type)
        tokenizer = self._processor.tokenizer
        self._eos_id = tokenizer.convert_tokens_to_ids(END_OF_SENTENCE)
        if self._eos_id is None or self._eos_id == tokenizer.unk_token_id:
            self._eos_id = tokenizer.eos_token_id
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self._eos_id
        self.whitelist_token_ids = _token_ids(tokenizer, self.profile.whitelist_tokens)
        positions = getattr(config.text_config, "max_position_embeddings", self._max_model_len)
        self.context_length = min(self._max_model_len, positions)
        self._guard = _check_guard()
        if self._guard.state != GUARD_VERIFIED and self._require_guard:
            raise GuardMissing(f"the transformers engine's guard check failed: {self._guard.detail}")
        self._worker = threading.Thread(target=self._work, name="transformers-engine", daemon=True)
        self._worker.start()
        logger.info("transformers engine loaded %s on %s (%s)", self.model_id, self.device, dtype)

    def is_ready(self) -> bool:
        return self._model is not None

    def guard_checks(self) -> dict[str, GuardCheck]:
        return {"in-process": self._guard}

    def submit(self, request: EngineRequest) -> concurrent.futures.Future[EngineOutput]:
        """Queue one page for the worker; cancelling the future drops it, or stops its row mid-generation."""
        if not self.is_ready():
            raise EngineUnavailable("the transformers engine is not loaded")
        future: concurrent.futures.Future[EngineOutput] = concurrent.futures.Future()
        self._put(_Queued(request, future), request.priority)
        return future

    def _put(self, item: _Queued | None, priority: float) -> None:
        self._queue.put((priority, next(self._arrivals), item))

    def _work(self) -> None:
        """The worker: take what is queued, one mode at a time, and run it as one batch."""
        held: list[_Queued] = []
        while True:
            first = held.pop(0) if held else self._queue.get()[2]
            if first is None:
                return
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    queued = self._queue.get_nowait()[2]
                except queue.Empty:
                    break
                if queued is None:
                    self._put(None, math.inf)  # stop after this batch
                    break
                (batch if queued.request.mode == first.request.mode else held).append(queued)
            self._run(batch)

    def _run(self, batch: list[_Queued]) -> None:
        """Generate for a batch and settle each page's future (a future stays pending until then, so it can be
        cancelled while its row runs)."""
        batch = [item for item in batch if not item.future.cancelled()]  # dropped while it waited its turn
        if not batch:
            return
        try:
            outcomes = self._generate(batch)
        except Exception as exc:  # noqa: BLE001 - every page of the batch shares the failure
            outcomes = [exc] * len(batch)
        for item, outcome in zip(batch, outcomes, strict=True):
            if not item.future.set_running_or_notify_cancel():
                continue  # cancelled meanwhile: nobody waits for it
            if isinstance(outcome, BaseException):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)

    def _generate(self, batch: list[_Queued]) -> list[EngineOutput | Exception]:
        import torch

        requests = [item.request for item in batch]
        guards = [request.guard for request in requests]
        started = time.monotonic()

        with torch.inference_mode():
            inputs = self._processor(
                images=[r.image for r in requests],
                text=[r.prompt for r in requests],
                return_tensors="pt",
                padding=True,
                # base: one patch instead of 2-6 tiles. Through the count, not crop_to_patches=False, which
                # shrinks the global view below what the processor counts image tokens for (a mismatch error).
                **({} if requests[0].mode == "gundam" else {"min_patches": 1, "max_patches": 1}),
            )
            prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
            budgets = [min(r.max_tokens, self.context_length - p) for r, p in zip(requests, prompt_tokens, strict=True)]
            if min(budgets) < 1:  # those pages fail; the others run on their own
                too_long = [
                    PromptTooLong(
                        f"The prompt and image take {tokens} tokens, leaving no room for output within the context "
                        f"length of {self.context_length}."
                    )
                    for tokens in prompt_tokens
                ]
                fitting = [item for item, budget in zip(batch, budgets, strict=True) if budget >= 1]
                rest = iter(self._generate(fitting) if fitting else [])
                return [error if budget < 1 else next(rest) for error, budget in zip(too_long, budgets, strict=True)]
            inputs = inputs.to(self.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(self._model.dtype)
            if "pixel_values_local" in inputs:
                inputs["pixel_values_local"] = inputs["pixel_values_local"].to(self._model.dtype)
            prompt_length = inputs["input_ids"].shape[1]
            sequences = self._model.generate(
                **inputs,
                do_sample=False,
                max_new_tokens=max(budgets),
                eos_token_id=self._eos_id,
                pad_token_id=self._pad_id,
                logits_processor=_logits_processors(guards, prompt_length),
                # transformers' own MaxTimeCriteria: generation stops after this many seconds; then it is 504.
                max_time=self._timeout_s,
                stopping_criteria=[_cancelled_rows_criterion([item.future for item in batch])],
                streamer=self._streamer(requests, budgets),
            )
            if self._timeout_s is not None and time.monotonic() - started >= self._timeout_s:
                timeout = EngineTimeout(
                    f"the engine did not finish within {self._timeout_s:g} s; generation was stopped"
                )
                return [timeout] * len(batch)
            generated = sequences[:, prompt_length:].tolist()
        return [
            self._output(tokens, budget, prompts, guard)
            for tokens, budget, prompts, guard in zip(generated, budgets, prompt_tokens, guards, strict=True)
        ]

    def _streamer(self, requests: Sequence[EngineRequest], budgets: Sequence[int]) -> Any:
        """A streamer for the rows whose caller wants their text as it comes; None when no row does."""
        if all(request.on_text is None for request in requests):
            return None
        sinks = [request.on_text for request in requests]
        return _rows_streamer(self._processor.tokenizer, sinks, budgets, self._eos_id)

    def close(self) -> None:
        if self._worker is not None:
            self._put(None, math.inf)
            self._worker.join(timeout=30)
            self._worker = None
        self._model = None
        self._processor = None

    def _output(self, tokens: list[int], budget: int, prompt_tokens: int, guard: GuardSettings) -> EngineOutput:
        if self._eos_id in tokens[:budget]:
            end = tokens.index(self._eos_id)
            kept, finish_reason, completion_tokens = tokens[:end], "stop", end + 1
        else:
            kept, finish_reason, completion_tokens = tokens[:budget], "length", min(len(tokens), budget)
        text = self._processor.tokenizer.decode(kept, skip_special_tokens=False)
        return EngineOutput(
            text=text,
            finish_reason=finish_reason,
            prompt_tokens=int(prompt_tokens),
            completion_tokens=completion_tokens,
            max_tokens=budget,
            guard=guard,
            token_ids=tuple(kept),
        )


def _cancelled_rows_criterion(futures: Sequence[concurrent.futures.Future]) -> Any:
    """Return a stopping criterion that ends a row's generation once its caller cancelled it."""
    import torch
    from transformers import StoppingCriteria

    class RowCancelled(StoppingCriteria):
        def __init__(self) -> None:
            self._asked_at = 0.0
            self._done = torch.zeros(len(futures), dtype=torch.bool)

        def __call__(self, input_ids, scores, **kwargs):
            if time.monotonic() - self._asked_at >= POLL_S:  # a check per token would be wasteful
                self._asked_at = time.monotonic()
                self._done = torch.tensor([future.cancelled() for future in futures], dtype=torch.bool)
            return self._done.to(input_ids.device)

    return RowCancelled()


def _rows_streamer(tokenizer: Any, sinks: Sequence[TextSink | None], budgets: Sequence[int], eos_id: int) -> Any:
    """A transformers streamer for a whole batch: each row's new text goes to its sink as its tokens come.

    transformers' TextStreamer takes one row only; this one keeps each row's ids and decodes incrementally as vLLM's
    detokenizer does (a piece is handed on once it no longer ends in half a character), up to the row's end of
    sentence or budget.
    """
    from transformers.generation.streamers import BaseStreamer

    class RowsStreamer(BaseStreamer):
        def __init__(self) -> None:
            self._prompt_seen = False
            self._ids: list[list[int]] = [[] for _ in sinks]
            self._offsets = [(0, 0) for _ in sinks]  # (prefix, read): vLLM's incremental detokenization
            self._open = [sink is not None for sink in sinks]

        def put(self, value: Any) -> None:
            if not self._prompt_seen:  # the first call hands over the prompts
                self._prompt_seen = True
                return
            for row, token in enumerate(value.tolist()):
                if not self._open[row]:
                    continue
                if token == eos_id or len(self._ids[row]) >= budgets[row]:
                    self._open[row] = False
                    continue
                self._ids[row].append(token)
                self._hand_on(row)

        def end(self) -> None:
            pass

        def _hand_on(self, row: int) -> None:
            ids, (prefix, read) = self._ids[row], self._offsets[row]
            before = tokenizer.decode(ids[prefix:read], skip_special_tokens=False)
            now = tokenizer.decode(ids[prefix:], skip_special_tokens=False)
            if len(now) > len(before) and not now.endswith("\ufffd"):
                sink = sinks[row]
                assert sink is not None
                sink(now[len(before) :])
                self._offsets[row] = (read, len(ids))

    return RowsStreamer()


def _log_through_the_service(*libraries: str) -> None:
    """The libraries' records go through the service's handler alone (its format, its redaction), once: each adds a
    raw stream handler of its own at import, which printed every hub retry twice."""
    for name in libraries:
        library = logging.getLogger(name)
        for handler in list(library.handlers):
            library.removeHandler(handler)
        library.propagate = True


def _logits_processors(guards: Sequence[GuardSettings], prompt_length: int) -> list[Any]:
    """Return what ``generate()`` is given to shape each step's scores: the n-gram guard, each row with its own."""
    return [_ngram_guard_processor(guards, prompt_length)]


def _check_guard() -> GuardCheck:
    """Run the processors ``generate()`` is given over a row that has generated 5 6 5 under a bigram guard: 6 must
    be banned (it would repeat 5 6) and nothing else."""
    import torch

    scores = torch.zeros(1, 8)
    for processor in _logits_processors([GuardSettings(2, 8)], prompt_length=0):
        scores = processor(torch.tensor([[5, 6, 5]]), scores)
    banned = sorted(torch.nonzero(scores[0] == float("-inf")).flatten().tolist())
    asked = "the logits processors generate() is given, after 5 6 5 with a bigram guard"
    if banned == [6]:
        return GuardCheck(GUARD_VERIFIED, f"{asked}, banned token 6 alone")
    return GuardCheck(GUARD_UNCHECKED, f"{asked}, banned {banned} instead of [6]")


def _ngram_guard_processor(guards: Sequence[GuardSettings], prompt_length: int) -> Any:
    """Return a transformers logits processor applying each row's guard to its generated tokens."""
    from transformers import LogitsProcessor

    class NGramGuard(LogitsProcessor):
        def __call__(self, input_ids, scores):
            for row, guard in enumerate(guards):
                if not guard.enabled:
                    continue
                window = input_ids[row, max(prompt_length, input_ids.shape[1] - guard.window_size) :].tolist()
                banned = banned_next_tokens(window, guard.ngram_size, guard.window_size, guard.whitelist_token_ids)
                if banned:
                    scores[row, sorted(banned)] = float("-inf")
            return scores

    return NGramGuard()


def _token_ids(tokenizer: Any, tokens: Sequence[str]) -> frozenset[int]:
    ids = {tokenizer.convert_tokens_to_ids(token) for token in tokens}
    return frozenset(i for i in ids if i is not None and i != tokenizer.unk_token_id)


def _resolve_device(setting: str, torch: Any) -> str:
    if setting != "auto":
        return setting
    return "cuda" if torch.cuda.is_available() else "cpu"


def _resolve_dtype(setting: str, device: str, torch: Any) -> Any:
    if setting == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, setting)


def _not_found_message(model_id: str, exc: BaseException) -> str:
    if os.path.isdir(model_id):
        tried = f"the local directory {model_id}, which does not hold a loadable checkpoint ({type(exc).__name__})"
    elif model_id.startswith((".", "/", "~")) or model_id.count("/") != 1:  # hub ids are "owner/name"
        tried = f"the local directory {model_id}, which does not exist"
    else:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        hub = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
        tried = f"the Hugging Face hub id {model_id}: it is not in the local cache and {hub}"
    return (
        f"Could not load the model. Tried {tried}. Download the checkpoint on a machine with access "
        "(for example `hf download deepseek-community/DeepSeek-OCR-2 --local-dir /models/deepseek-ocr-2`) and "
        "set DEEPSEEK_MODEL_NAME to that directory."
    )
