"""OCR engines behind one interface, and the choice of engine from the settings."""

from __future__ import annotations

import importlib.util

from ocr_api.engines.base import (
    EngineFailure,
    EngineLoadError,
    EngineOutput,
    EngineRequest,
    EngineTimeout,
    EngineUnavailable,
    GuardCheck,
    GuardMissing,
    OcrEngine,
    PromptTooLong,
    run_batch,
)
from ocr_api.profiles import choose_engine, cuda_present
from ocr_api.settings import Settings

__all__ = [
    "EngineFailure",
    "EngineLoadError",
    "EngineOutput",
    "EngineRequest",
    "EngineTimeout",
    "EngineUnavailable",
    "GuardCheck",
    "GuardMissing",
    "OcrEngine",
    "PromptTooLong",
    "build_engine",
    "choose_engine",
    "run_batch",
]


def build_engine(settings: Settings) -> OcrEngine:
    """Return the (not yet loaded) engine the settings ask for."""
    name = choose_engine(
        settings.engine,
        cuda_present(),
        importlib.util.find_spec("vllm") is not None,
        settings.engine_url,
        settings.model_name,
    )
    if name == "remote":
        from ocr_api.engines.remote.engine import RemoteEngine

        return RemoteEngine(
            settings.engine_urls,
            settings.model_name,
            timeout_s=settings.engine_timeout_s,
            # Fewer connections than admitted pages would queue pages in the pool while they count as at the engine.
            connections=max(settings.engine_connections, settings.max_pages_in_flight),
            api_key=settings.engine_api_key,
            image_format=settings.engine_image_format,
            require_guard=not settings.allow_unguarded_engine,
            guard_recheck_s=settings.guard_recheck_s,
        )
    if name == "vllm":
        from ocr_api.engines.vllm_engine import VllmEngine
        from ocr_api.engines.vllm_flags import engine_flags

        return VllmEngine(
            engine_flags(settings),
            timeout_s=settings.engine_timeout_s,
            require_guard=not settings.allow_unguarded_engine,
        )
    from ocr_api.engines.transformers_engine import TransformersEngine

    return TransformersEngine(
        settings.model_name,
        settings.torch_device,
        dtype=settings.torch_dtype,
        max_model_len=settings.max_model_len,
        timeout_s=settings.engine_timeout_s,
        max_batch=settings.engine_batch_pages,
        require_guard=not settings.allow_unguarded_engine,
    )
