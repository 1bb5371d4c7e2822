"""Per-model defaults, in one table: guard sizes, context length and the tokens the guard never bans.

Standard library only: ``scripts/bootstrap.sh`` asks ``python3 -m ocr_api.profiles engine`` which engine to install
before any virtual environment exists.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
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
    tile_size: int  # side of one local view (gundam's tiles)
    base_size: int = 1024  # side of the global view
    min_tiles: int = 2
    max_tiles: int = 6
    whitelist_tokens: tuple[str, ...] = ("<td>", "</td>")


# Guard sizes are the authors' image-script settings (v1 30/90, v2 20/90); context 8192 as they serve it; the
# image geometry is their processors' (gundam: a 1024 global view plus 2-6 tiles of 640 for v1, 768 for v2).
# docs/CONFIGURATION.md shows this table; a test keeps the two in step.
PROFILES: dict[str, ModelProfile] = {
    "deepseek-ocr": ModelProfile(
        family="deepseek-ocr",
        vllm_architecture="DeepseekOCRForCausalLM",
        ngram_size=30,
        window_size=90,
        context_length=8192,
        tile_size=640,
    ),
    "deepseek-ocr-2": ModelProfile(
        family="deepseek-ocr-2",
        vllm_architecture="DeepseekOCR2ForCausalLM",
        ngram_size=20,
        window_size=90,
        context_length=8192,
        tile_size=768,
    ),
}

# What each engine loads when DEEPSEEK_MODEL_NAME is empty. transformers runs only the converted
# DeepSeek-OCR-2 layout; vLLM runs the authors' own checkpoints.
DEFAULT_CHECKPOINTS: dict[str, str] = {
    "transformers": "deepseek-community/DeepSeek-OCR-2",
    "vllm": "deepseek-ai/DeepSeek-OCR-2",
}


# The two layouts DeepSeek-OCR checkpoints come in. The authors' own (deepseek-ai/*, mirrored as unsloth/*) is what
# vLLM runs; transformers runs only the converted DeepSeek-OCR-2 (deepseek-community/DeepSeek-OCR-2).
TRANSFORMERS_ARCHITECTURES = ("DeepseekOcr2ForConditionalGeneration",)
TRANSFORMERS_MODEL_TYPES = ("deepseek_ocr2",)
VLLM_ARCHITECTURES = tuple(profile.vllm_architecture for profile in PROFILES.values())


def checkpoint_layout(name: str) -> str | None:
    """Return "transformers" or "original" for a checkpoint directory or hub id; None when it cannot be told.

    A local directory's config.json decides (its architectures, else its model_type); a hub id is told by its owner.
    """
    config = _read_config(name)
    if config is not None:
        architectures = config.get("architectures") or []
        if any(arch in TRANSFORMERS_ARCHITECTURES for arch in architectures):
            return "transformers"
        if any(arch in VLLM_ARCHITECTURES for arch in architectures):
            return "original"
        return "transformers" if config.get("model_type") in TRANSFORMERS_MODEL_TYPES else None
    owner = name.split("/", 1)[0].lower() if name.count("/") == 1 and not os.path.exists(name) else ""
    if owner == "deepseek-community":
        return "transformers"
    if owner in ("deepseek-ai", "unsloth"):
        return "original"
    return None


def choose_engine(
    requested: str, cuda_present: bool, vllm_installed: bool, engine_url: str = "", model_name: str = ""
) -> str:
    """Resolve ``auto``: remote with a URL; else the engine the checkpoint's layout needs; else vLLM on CUDA.

    A transformers-layout checkpoint runs on transformers even on a GPU machine; an original-layout one on vLLM
    where CUDA is (elsewhere transformers is chosen and refuses it with a message naming the checkpoint it needs).
    """
    if requested != "auto":
        return requested
    if engine_url:
        return "remote"
    gpu_vllm = "vllm" if cuda_present and vllm_installed else "transformers"
    layout = checkpoint_layout(model_name) if model_name else None
    if layout == "transformers":
        return "transformers"
    return gpu_vllm


def layout_mismatch(engine: str, model_name: str) -> str | None:
    """Return why ``engine`` cannot load ``model_name`` (its layout is the other engine's), naming what it needs."""
    layout = checkpoint_layout(model_name)
    if engine == "transformers" and layout == "original":
        return (
            f"{model_name} is in the model authors' original layout, which vLLM runs; the transformers engine needs "
            f"DeepSeek-OCR-2 in transformers layout ({DEFAULT_CHECKPOINTS['transformers']}). Download that one and set "
            "DEEPSEEK_MODEL_NAME to it, or run this checkpoint with OCR_ENGINE=vllm on a CUDA machine."
        )
    if engine == "vllm" and layout == "transformers":
        return (
            f"{model_name} is DeepSeek-OCR-2 in transformers layout, which vLLM cannot load; the vllm engine needs the "
            f"model authors' original layout ({DEFAULT_CHECKPOINTS['vllm']} or deepseek-ai/DeepSeek-OCR). Download one "
            "of those and set DEEPSEEK_MODEL_NAME to it, or run this checkpoint with OCR_ENGINE=transformers."
        )
    return None


def cuda_present() -> bool:
    """Return True where an NVIDIA driver is installed (asking torch would initialise CUDA in this process)."""
    return shutil.which("nvidia-smi") is not None


def _read_config(name: str) -> dict | None:
    config_path = Path(name) / "config.json"
    if not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


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
    config = _read_config(name)
    if config is not None:
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


def main(argv: list[str]) -> int:
    """For the start scripts, before they install anything (standard library only):

    ``python3 -m ocr_api.profiles engine``: print the engine OCR_ENGINE resolves to; exit 1 with one line when that
    engine cannot load DEEPSEEK_MODEL_NAME's layout. The scripts install what that engine needs, so "vLLM installed"
    is taken to be true on a CUDA machine. ``python3 -m ocr_api.profiles check ENGINE``: only the layout check.
    """
    env = os.environ
    model_name = env.get("DEEPSEEK_MODEL_NAME", "").strip()
    if argv == ["engine"]:
        engine = choose_engine(
            env.get("OCR_ENGINE", "").strip() or "auto",
            cuda_present=cuda_present(),
            vllm_installed=True,
            engine_url=env.get("OCR_ENGINE_URL", "").strip(),
            model_name=model_name,
        )
    elif len(argv) == 2 and argv[0] == "check":
        engine = argv[1]
    else:
        print("usage: python3 -m ocr_api.profiles engine | check ENGINE", file=sys.stderr)
        return 2
    mismatch = layout_mismatch(engine, model_name or DEFAULT_CHECKPOINTS.get(engine, ""))
    if mismatch:
        print(f"error: {mismatch}", file=sys.stderr)
        return 1
    if argv == ["engine"]:
        print(engine)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
