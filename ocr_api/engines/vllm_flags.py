"""The vLLM engine's flags, in `vllm serve` form, and its environment, shared by the in-process engine and the server.

One string, ``VLLM_EXTRA_ARGS``, moves between the two unchanged: ``scripts/start_engine.sh`` (which
``start_production.sh`` and the deployment files run) passes these flags to vLLM's OpenAI server, and the in-process
engine parses the same list with vLLM's own argument parser. ``python -m ocr_api.engines.vllm_flags`` prints them one
per line for the shell; ``--env`` prints the environment vLLM is started with, ``NAME=VALUE`` a line.
"""

from __future__ import annotations

import shlex
import sys

from ocr_api.profiles import DEFAULT_CHECKPOINTS, layout_mismatch
from ocr_api.settings import ConfigError, Settings

NGRAM_PROCESSOR = "vllm.model_executor.models.deepseek_ocr:NGramPerReqLogitsProcessor"

# The DeepSeek recipe: the guard as a per-request logits processor, and no prefix or multimodal caches,
# which only cost memory when every request carries a different page.
RECIPE_FLAGS: tuple[str, ...] = (
    "--logits-processors",
    NGRAM_PROCESSOR,
    "--no-enable-prefix-caching",
    "--mm-processor-cache-gb",
    "0",
)


# On a CUDA machine with Triton vLLM picks Model Runner V2 by default, whose loader refuses V1-interface logits
# processors such as NGramPerReqLogitsProcessor: the server would not start (vLLM 0.32.0), or with another version
# run without the guard. The V1 runner runs the recipe's guard as the authors' scripts do, so it is pinned wherever the
# project starts vLLM; tests/test_vllm_guard.py asks vLLM's own code what it would pick on a GPU with these.
ENGINE_ENVIRONMENT: dict[str, str] = {"VLLM_USE_V2_MODEL_RUNNER": "0"}
# What an operator is told when an engine lacks the guard: the environment and the flag above, as vLLM takes them.
UNGUARDED_ADVICE = (
    "Start vLLM with the service's flags and environment (scripts/start_engine.sh; by hand: "
    f"{' '.join(f'{name}={value}' for name, value in ENGINE_ENVIRONMENT.items())} and --logits-processors "
    f"{NGRAM_PROCESSOR}, see docs/DEPLOYMENT.md), or set ALLOW_UNGUARDED_ENGINE=1 to use it anyway (dangerous: pages "
    "can loop to the token limit)."
)


def model_for(settings: Settings) -> str:
    """Return the checkpoint vLLM loads: DEEPSEEK_MODEL_NAME, or vLLM's default DeepSeek-OCR-2."""
    return settings.model_name or DEFAULT_CHECKPOINTS["vllm"]


# The GPU settings by their vLLM flags, with vLLM's own defaults: a flag is passed only when its setting differs,
# so that a CPU build (which has no GPU memory to share) and vLLM's own later defaults are left alone.
GPU_FLAGS: tuple[tuple[str, str, float], ...] = (
    ("gpu_memory_utilization", "--gpu-memory-utilization", 0.9),
    ("tensor_parallel_size", "--tensor-parallel-size", 1),
    ("data_parallel_size", "--data-parallel-size", 1),
)


def engine_flags(settings: Settings) -> list[str]:
    """Return the engine flags: model, recipe, context length, GPU settings, then VLLM_EXTRA_ARGS (later flags win)."""
    try:
        extra = shlex.split(settings.vllm_extra_args)
    except ValueError as exc:
        raise ConfigError(f"VLLM_EXTRA_ARGS cannot be split into flags: {exc}") from None
    gpu = []
    for name, flag, vllm_default in GPU_FLAGS:
        value = getattr(settings, name)
        if value != vllm_default:
            gpu += [flag, f"{value:g}"]
    return [
        "--model", model_for(settings), *RECIPE_FLAGS, "--max-model-len", str(settings.max_model_len), *gpu, *extra
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Print the flags one per line (``--env``: the environment); exit 1 with one clear line on bad settings or a
    checkpoint vLLM cannot load."""
    if (argv if argv is not None else sys.argv[1:]) == ["--env"]:
        print("\n".join(f"{name}={value}" for name, value in ENGINE_ENVIRONMENT.items()))
        return 0
    try:
        settings = Settings.from_env()
        flags = engine_flags(settings)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    mismatch = layout_mismatch("vllm", model_for(settings))
    if mismatch:
        print(f"error: {mismatch}", file=sys.stderr)
        return 1
    print("\n".join(flags))
    return 0


if __name__ == "__main__":
    sys.exit(main())
