"""DeepSeek-OCR-2 through transformers' native classes (no remote code), on CUDA when present, else CPU."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from ocr_api.engines.base import (
    POLL_S,
    RESOLUTION_MODES,
    Cancelled,
    EngineLoadError,
    EngineOutput,
    EngineRequest,
    EngineTimeout,
    PromptTooLong,
    StopCheck,
)
from ocr_api.guard import GuardSettings, banned_next_tokens
from ocr_api.interpretation import END_OF_SENTENCE
from ocr_api.models import DEFAULT_CHECKPOINTS, ModelProfile, layout_mismatch, profile_for_model_type

logger = logging.getLogger(__name__)


class TransformersEngine:
    """Runs DeepSeek-OCR-2 with ``generate()``; one batch at a time, so concurrent callers take turns."""

    name = "transformers"
    modes = RESOLUTION_MODES  # the processor's patch count switches tiles on and off

    def __init__(
        self,
        model_name: str = "",
        device: str = "auto",
        dtype: str = "auto",
        max_model_len: int = 8192,
        timeout_s: float | None = None,
    ):
        self.model_id = model_name or DEFAULT_CHECKPOINTS["transformers"]
        self._device_setting = device
        self._dtype_setting = dtype
        self._max_model_len = max_model_len
        self._timeout_s = timeout_s
        self._lock = threading.Lock()  # generate() on one model is not safe from several threads
        self._model: Any = None
        self._processor: Any = None
        self.profile: ModelProfile = profile_for_model_type("deepseek_ocr2")
        self.device = "cpu"
        self.whitelist_token_ids: frozenset[int] = frozenset()

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
        self._context_length = min(self._max_model_len, positions)
        logger.info("transformers engine loaded %s on %s (%s)", self.model_id, self.device, dtype)

    def is_ready(self) -> bool:
        return self._model is not None

    def generate(self, requests: Sequence[EngineRequest], should_stop: StopCheck | None = None) -> list[EngineOutput]:
        """Generate for all requests in one ``generate()`` call, greedy, with the n-gram guard per row."""
        if not requests:
            return []
        if len({r.mode for r in requests}) > 1:  # one processor call takes one mode: split, keep the order
            by_mode = {
                mode: self.generate([r for r in requests if r.mode == mode], should_stop)
                for mode in {r.mode for r in requests}
            }
            return [by_mode[r.mode].pop(0) for r in requests]
        guards = [GuardSettings(r.ngram_size, r.window_size, self.whitelist_token_ids) for r in requests]
        started = time.monotonic()
        stop = should_stop or (lambda: False)
        # Waiting for the model (another request holds it) counts against the timeout too, and ends when the
        # caller stops waiting.
        while not self._lock.acquire(timeout=POLL_S):
            if stop():
                raise Cancelled("the caller stopped waiting before the model was free")
            if self._timeout_s is not None and time.monotonic() - started >= self._timeout_s:
                raise EngineTimeout(f"the engine stayed busy with other requests for {self._timeout_s:g} s")
        try:
            return self._generate_locked(requests, guards, started, stop)
        finally:
            self._lock.release()

    def _generate_locked(
        self, requests: Sequence[EngineRequest], guards: list[GuardSettings], started: float, stop: StopCheck
    ) -> list[EngineOutput]:
        import torch

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
            budgets = [
                min(r.max_tokens, self._context_length - p) for r, p in zip(requests, prompt_tokens, strict=True)
            ]
            if min(budgets) < 1:
                raise PromptTooLong(
                    f"The prompt and image take {max(prompt_tokens)} tokens, leaving no room for output within "
                    f"the context length of {self._context_length}."
                )
            inputs = inputs.to(self.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(self._model.dtype)
            if "pixel_values_local" in inputs:
                inputs["pixel_values_local"] = inputs["pixel_values_local"].to(self._model.dtype)
            prompt_length = inputs["input_ids"].shape[1]
            remaining = None if self._timeout_s is None else max(0.0, self._timeout_s - (time.monotonic() - started))
            sequences = self._model.generate(
                **inputs,
                do_sample=False,
                max_new_tokens=max(budgets),
                eos_token_id=self._eos_id,
                pad_token_id=self._pad_id,
                logits_processor=[_ngram_guard_processor(guards, prompt_length)],
                # transformers' own MaxTimeCriteria: generation stops after this many seconds; then it is 504.
                max_time=remaining,
                stopping_criteria=[_caller_gone_criterion(stop)],
            )
            if stop():
                raise Cancelled("the caller stopped waiting; generation was stopped")
            if self._timeout_s is not None and time.monotonic() - started >= self._timeout_s:
                raise EngineTimeout(f"the engine did not finish within {self._timeout_s:g} s; generation was stopped")
            generated = sequences[:, prompt_length:].tolist()
        return [
            self._output(tokens, budget, prompts, guard)
            for tokens, budget, prompts, guard in zip(generated, budgets, prompt_tokens, guards, strict=True)
        ]

    def close(self) -> None:
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


def _caller_gone_criterion(stop: StopCheck) -> Any:
    """Return a stopping criterion that ends generation for every row once the caller stops waiting."""
    import torch
    from transformers import StoppingCriteria

    class CallerGone(StoppingCriteria):
        def __init__(self) -> None:
            self._asked_at = 0.0

        def __call__(self, input_ids, scores, **kwargs):
            gone = False
            if time.monotonic() - self._asked_at >= POLL_S:  # a socket peek per token would be wasteful
                self._asked_at = time.monotonic()
                gone = stop()
            return torch.full((input_ids.shape[0],), gone, dtype=torch.bool, device=input_ids.device)

    return CallerGone()


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
