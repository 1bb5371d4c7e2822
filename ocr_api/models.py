"""Per-model defaults, in one table: guard sizes, context length and the tokens the guard never bans."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelProfile:
    """Decoding defaults for one DeepSeek-OCR generation."""

    family: str
    vllm_architecture: str
    ngram_size: int
    window_size: int
    context_length: int
    whitelist_tokens: tuple[str, ...] = ("<td>", "</td>")


# Guard sizes are the authors' image-script settings (v1 30/90, v2 20/90); context 8192 as they serve it.
# docs/CONFIGURATION.md shows this table; a test keeps the two in step.
PROFILES: dict[str, ModelProfile] = {
    "deepseek-ocr": ModelProfile(
        family="deepseek-ocr",
        vllm_architecture="DeepseekOCRForCausalLM",
        ngram_size=30,
        window_size=90,
        context_length=8192,
    ),
    "deepseek-ocr-2": ModelProfile(
        family="deepseek-ocr-2",
        vllm_architecture="DeepseekOCR2ForCausalLM",
        ngram_size=20,
        window_size=90,
        context_length=8192,
    ),
}

# What each engine loads when DEEPSEEK_MODEL_NAME is empty. transformers runs only the converted
# DeepSeek-OCR-2 layout; vLLM runs the authors' own checkpoints.
DEFAULT_CHECKPOINTS: dict[str, str] = {
    "transformers": "deepseek-community/DeepSeek-OCR-2",
    "vllm": "deepseek-ai/DeepSeek-OCR-2",
}


def profile_for_model_type(model_type: str) -> ModelProfile:
    """Return the profile for a checkpoint's ``model_type`` (config.json)."""
    if model_type in ("deepseek_ocr2", "deepseek_ocr_2"):
        return PROFILES["deepseek-ocr-2"]
    if model_type in ("deepseek_vl_v2", "deepseek_ocr"):
        return PROFILES["deepseek-ocr"]
    raise ValueError(f"model_type {model_type!r} is not a DeepSeek-OCR checkpoint")


def profile_for_architectures(architectures: list[str] | tuple[str, ...]) -> ModelProfile | None:
    """Return the profile whose vLLM architecture is among ``architectures``, if any."""
    for profile in PROFILES.values():
        if profile.vllm_architecture in architectures:
            return profile
    return None


def profile_for_checkpoint(name: str) -> ModelProfile:
    """Return the profile of a checkpoint named by a local directory or a hub id, without loading it.

    A local directory's config.json decides; otherwise the name does (``…OCR-2`` is v2, anything else v1).
    """
    config_path = Path(name) / "config.json"
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text())
        except (OSError, ValueError):
            config = {}
        by_architecture = profile_for_architectures(config.get("architectures") or [])
        if by_architecture is not None:
            return by_architecture
        try:
            return profile_for_model_type(str(config.get("model_type", "")))
        except ValueError:
            pass
    lowered = name.lower().rstrip("/")
    is_v2 = any(marker in lowered for marker in ("ocr-2", "ocr2", "ocr_2"))
    return PROFILES["deepseek-ocr-2" if is_v2 else "deepseek-ocr"]
