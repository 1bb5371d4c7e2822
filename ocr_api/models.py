"""Per-model defaults, in one table: guard sizes, context length and the tokens the guard never bans."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelProfile:
    """Decoding defaults for one DeepSeek-OCR generation."""

    family: str
    ngram_size: int
    window_size: int
    context_length: int
    whitelist_tokens: tuple[str, ...] = ("<td>", "</td>")


# Guard sizes are the authors' image-script settings (v1 30/90, v2 20/90); context 8192 as they serve it.
PROFILES: dict[str, ModelProfile] = {
    "deepseek-ocr": ModelProfile(family="deepseek-ocr", ngram_size=30, window_size=90, context_length=8192),
    "deepseek-ocr-2": ModelProfile(family="deepseek-ocr-2", ngram_size=20, window_size=90, context_length=8192),
}

# What each engine loads when DEEPSEEK_MODEL_NAME is empty.
DEFAULT_CHECKPOINTS: dict[str, str] = {
    "transformers": "deepseek-community/DeepSeek-OCR-2",
}


def profile_for_model_type(model_type: str) -> ModelProfile:
    """Return the profile for a checkpoint's ``model_type`` (config.json)."""
    if model_type in ("deepseek_ocr2", "deepseek_ocr_2"):
        return PROFILES["deepseek-ocr-2"]
    if model_type in ("deepseek_vl_v2", "deepseek_ocr"):
        return PROFILES["deepseek-ocr"]
    raise ValueError(f"model_type {model_type!r} is not a DeepSeek-OCR checkpoint")
