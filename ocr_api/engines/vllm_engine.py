"""vLLM inside the process (``python app.py`` on a GPU machine): one AsyncLLM on its own event loop thread.

``vllm.LLM`` is not thread-safe and serves one ``generate()`` at a time. AsyncLLM is vLLM's own answer for
servers: every request thread hands its pages to the one event loop, one at a time, so pages from concurrent HTTP
calls reach vLLM's scheduler together and are batched continuously.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import uuid
from collections.abc import Sequence
from typing import Any

from ocr_api.engines.base import (
    GUARD_MISSING,
    GUARD_UNCHECKED,
    GUARD_VERIFIED,
    EngineLoadError,
    EngineOutput,
    EngineRequest,
    EngineTimeout,
    EngineUnavailable,
    GuardCheck,
    GuardMissing,
    PromptTooLong,
    context_budget,
)
from ocr_api.engines.vllm_flags import (
    UNGUARDED_ADVICE,
    installed_runner,
    vllm_engine_args,
    with_guard,
    with_guard_importable,
)
from ocr_api.guard import GUARD_PROBE_ARGS, GUARD_PROBE_PROMPT, probe_refused_by_guard
from ocr_api.profiles import PROFILES, ModelProfile, layout_mismatch, profile_for_architectures
from ocr_api.settings import ConfigError

logger = logging.getLogger(__name__)


class VllmEngine:
    """Runs DeepSeek-OCR or DeepSeek-OCR-2 with vLLM's AsyncLLM; safe to call from any number of threads."""

    name = "vllm"
    modes = ("gundam",)  # vLLM's DeepSeek-OCR processors hard-code it

    def __init__(
        self,
        flags: Sequence[str],
        timeout_s: float = 240.0,
        *,
        require_guard: bool = True,
        guard_processor: bool = True,
    ):
        """``flags`` are vllm_flags.engine_flags'; ``guard_processor`` False loads no guard (to test the check)."""
        self._flags = list(flags)
        self._require_guard = require_guard
        self._guard_processor = guard_processor
        self._guard = GuardCheck(GUARD_UNCHECKED, "the engine has not started")
        self.model_id = self._flags[self._flags.index("--model") + 1] if "--model" in self._flags else ""
        self._timeout_s = timeout_s
        self.profile: ModelProfile = PROFILES["deepseek-ocr-2"]
        self.whitelist_token_ids: frozenset[int] = frozenset()
        self.context_length = self.profile.context_length
        self._engine: Any = None
        self._eos_id: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def load(self) -> None:
        """Parse the flags with vLLM's parser, start AsyncLLM on a loop thread, read model facts from it and check
        that it applies the repetition guard."""
        mismatch = layout_mismatch(self.name, self.model_id)
        if mismatch:
            raise EngineLoadError(mismatch)
        try:
            engine_args = vllm_engine_args(self._flags_with_guard())
        except ConfigError as exc:
            raise EngineLoadError(str(exc)) from None
        from vllm.v1.engine.async_llm import AsyncLLM

        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="vllm-event-loop", daemon=True).start()
        try:
            self._engine = self._run(self._start(AsyncLLM, engine_args))
        except Exception as exc:  # noqa: BLE001 - any start-up failure ends in one clear message
            self._stop_loop()
            raise EngineLoadError(
                f"vLLM could not start {self.model_id}: {type(exc).__name__}: {str(exc)[:500]}. If the weights are not "
                "on this machine, download them and set DEEPSEEK_MODEL_NAME to that directory."
            ) from None
        model_config = self._engine.model_config
        profile = profile_for_architectures(getattr(model_config.hf_config, "architectures", None) or [])
        if profile is None:
            raise EngineLoadError(f"{self.model_id} is not a DeepSeek-OCR checkpoint vLLM can run here.")
        self.profile = profile
        self.context_length = int(model_config.max_model_len)
        tokenizer = self._engine.get_tokenizer()
        self._eos_id = tokenizer.eos_token_id
        vocab = tokenizer.get_vocab()
        self.whitelist_token_ids = frozenset(vocab[token] for token in profile.whitelist_tokens if token in vocab)
        logger.info("vLLM engine loaded %s (%s, context %d)", self.model_id, profile.family, self.context_length)
        self._guard = self._run(self._check_guard())
        if self._guard.state != GUARD_VERIFIED:
            if self._require_guard:
                self.close()
                raise GuardMissing(f"vLLM's guard check failed: {self._guard.detail}. {UNGUARDED_ADVICE}")
            logger.warning("the guard check failed, and ALLOW_UNGUARDED_ENGINE is set: %s", self._guard.detail)
        else:
            logger.info("repetition guard verified: %s", self._guard.detail)

    def _flags_with_guard(self) -> list[str]:
        """The flags with the guard's processor for the model runner this vLLM will run (vLLM's own decision).

        vLLM imports the processor by name in each process it starts, which inherit this process's environment: so
        ocr_guard's folder goes on PYTHONPATH here, as scripts/start_engine.sh puts it for the server.
        """
        if not self._guard_processor:
            return self._flags
        runner, why = installed_runner(self._flags)
        logger.info("the repetition guard for Model Runner %s: %s", runner.upper(), why)
        os.environ.update(with_guard_importable(dict(os.environ)))
        return with_guard(self._flags, runner)

    def is_ready(self) -> bool:
        return self._engine is not None and not self._engine.errored

    def guard_checks(self) -> dict[str, GuardCheck]:
        return {"in-process": self._guard}

    def submit(self, request: EngineRequest) -> concurrent.futures.Future[EngineOutput]:
        """Hand one page to AsyncLLM; cancelling the future (or ENGINE_TIMEOUT_S passing) makes vLLM abort it."""
        if not self.is_ready():
            raise EngineUnavailable("the vLLM engine is not running")
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(self._generate_within_timeout(request), self._loop)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None
        self._stop_loop()

    async def _start(self, async_llm: Any, engine_args: Any) -> Any:
        # Built inside the loop so that its output handler task lives on this loop.
        return async_llm.from_engine_args(engine_args)

    async def _check_guard(self) -> GuardCheck:
        """Send the probe: the guard's processor refuses it at admission; without the processor vLLM answers it."""
        from vllm import SamplingParams
        from vllm.exceptions import VLLMValidationError

        params = SamplingParams(temperature=0.0, max_tokens=1, extra_args=dict(GUARD_PROBE_ARGS))
        asked = f"a request with extra_args {GUARD_PROBE_ARGS}"
        try:
            async for _ in self._engine.generate(GUARD_PROBE_PROMPT, params, request_id=f"guard-{uuid.uuid4().hex}"):
                pass
        except (VLLMValidationError, ValueError) as exc:
            if probe_refused_by_guard(str(exc)):
                return GuardCheck(GUARD_VERIFIED, f"{asked} was refused by the guard's validation: {exc}")
            return GuardCheck(GUARD_UNCHECKED, f"{asked} was refused for another reason: {exc}")
        return GuardCheck(GUARD_MISSING, f"{asked} was answered: no n-gram guard is loaded")

    async def _generate_within_timeout(self, request: EngineRequest) -> EngineOutput:
        try:
            return await asyncio.wait_for(self._generate_one(request), self._timeout_s)
        except asyncio.TimeoutError:
            raise EngineTimeout(f"the engine did not answer within {self._timeout_s:g} s") from None

    async def _generate_one(self, request: EngineRequest) -> EngineOutput:
        from vllm import SamplingParams
        from vllm.exceptions import VLLMValidationError
        from vllm.v1.engine.exceptions import EngineDeadError

        params = SamplingParams(
            temperature=0.0,
            max_tokens=request.max_tokens,
            skip_special_tokens=False,
            extra_args=request.guard.vllm_extra_args(),
        )
        prompt = {"prompt": request.prompt, "multi_modal_data": {"image": request.image}}
        final = None
        streamed = 0  # characters of the text handed to on_text so far (vLLM's outputs are cumulative)
        try:
            generation = self._engine.generate(prompt, params, request_id=uuid.uuid4().hex, priority=request.priority)
            async for output in generation:
                final = output
                if request.on_text is not None and output.outputs:
                    text = output.outputs[0].text
                    if len(text) > streamed:
                        request.on_text(text[streamed:])
                        streamed = len(text)
        except EngineDeadError:
            raise EngineUnavailable("the vLLM engine has died") from None
        except VLLMValidationError as exc:
            if "maximum model length" in str(exc):
                raise PromptTooLong(str(exc)) from None
            raise
        if final is None or not final.outputs:
            raise EngineUnavailable("the vLLM engine returned no output")
        completion = final.outputs[0]
        if completion.finish_reason == "abort":
            raise EngineUnavailable("the vLLM engine aborted the request")
        prompt_tokens = len(final.prompt_token_ids or ())
        generated = tuple(completion.token_ids)
        if generated and generated[-1] == self._eos_id:
            generated = generated[:-1]  # the text leaves it out; so do the ids, as the other engines do
        return EngineOutput(
            text=completion.text,
            finish_reason=completion.finish_reason or "stop",
            prompt_tokens=prompt_tokens,
            completion_tokens=len(completion.token_ids),
            max_tokens=context_budget(request.max_tokens, self.context_length, prompt_tokens),
            guard=request.guard,
            token_ids=generated,
        )

    def _run(self, coroutine: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _stop_loop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop = None
