"""OCR engines behind one interface, and the choice of engine from the settings."""

from __future__ import annotations

import importlib.util
import shutil

from config import ConfigError, Settings
from ocr_api.engines.base import (
    EngineFailure,
    EngineLoadError,
    EngineOutput,
    EngineRequest,
    OcrEngine,
    PromptTooLong,
)

__all__ = [
    "EngineFailure",
    "EngineLoadError",
    "EngineOutput",
    "EngineRequest",
    "OcrEngine",
    "PromptTooLong",
    "build_engine",
    "choose_engine",
]

IMPLEMENTED_ENGINES = ("transformers",)


def choose_engine(requested: str, cuda_present: bool, vllm_installed: bool) -> str:
    """Resolve ``auto``: vLLM where CUDA and vLLM are both present, else transformers."""
    if requested != "auto":
        return requested
    return "vllm" if cuda_present and vllm_installed else "transformers"


def build_engine(settings: Settings) -> OcrEngine:
    """Return the (not yet loaded) engine the settings ask for."""
    name = choose_engine(settings.engine, _cuda_present(), importlib.util.find_spec("vllm") is not None)
    if name == "transformers":
        from ocr_api.engines.transformers_engine import TransformersEngine

        return TransformersEngine(
            settings.model_name, settings.torch_device, settings.torch_dtype, settings.max_model_len
        )
    raise ConfigError(
        f"OCR_ENGINE={name} is not available in this version; implemented engines: {', '.join(IMPLEMENTED_ENGINES)}."
    )


def _cuda_present() -> bool:
    # Asking torch would initialise CUDA in this process (fatal before a fork); the driver tool is enough.
    return shutil.which("nvidia-smi") is not None
