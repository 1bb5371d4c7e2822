"""OCR engines behind one interface, and the choice of engine from the settings."""

from __future__ import annotations

import importlib.util
import shutil

from config import Settings
from ocr_api.engines.base import (
    EngineFailure,
    EngineLoadError,
    EngineOutput,
    EngineRequest,
    EngineTimeout,
    EngineUnavailable,
    OcrEngine,
    PromptTooLong,
)

__all__ = [
    "EngineFailure",
    "EngineLoadError",
    "EngineOutput",
    "EngineRequest",
    "EngineTimeout",
    "EngineUnavailable",
    "OcrEngine",
    "PromptTooLong",
    "build_engine",
    "choose_engine",
]


def choose_engine(requested: str, cuda_present: bool, vllm_installed: bool, engine_url: str = "") -> str:
    """Resolve ``auto``: remote when a URL is set, vLLM where CUDA and vLLM are both present, else transformers."""
    if requested != "auto":
        return requested
    if engine_url:
        return "remote"
    return "vllm" if cuda_present and vllm_installed else "transformers"


def build_engine(settings: Settings) -> OcrEngine:
    """Return the (not yet loaded) engine the settings ask for."""
    name = choose_engine(
        settings.engine, _cuda_present(), importlib.util.find_spec("vllm") is not None, settings.engine_url
    )
    if name == "remote":
        from ocr_api.engines.remote_engine import RemoteEngine

        return RemoteEngine(
            settings.engine_url,
            settings.model_name,
            timeout_s=settings.engine_timeout_s,
            connections=settings.engine_connections,
            api_key=settings.engine_api_key,
        )
    if name == "vllm":
        from ocr_api.engines.vllm_engine import VllmEngine
        from ocr_api.engines.vllm_flags import engine_flags

        return VllmEngine(engine_flags(settings), timeout_s=settings.engine_timeout_s)
    from ocr_api.engines.transformers_engine import TransformersEngine

    return TransformersEngine(
        settings.model_name,
        settings.torch_device,
        settings.torch_dtype,
        settings.max_model_len,
        timeout_s=settings.engine_timeout_s,
    )


def _cuda_present() -> bool:
    # Asking torch would initialise CUDA in this process (fatal before a fork); the driver tool is enough.
    return shutil.which("nvidia-smi") is not None
