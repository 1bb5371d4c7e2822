"""The vLLM engine's flags, in `vllm serve` form, shared by the in-process engine and the server, and the repetition
guard's processor for the model runner the installed vLLM runs.

One string, ``VLLM_EXTRA_ARGS``, moves between the two unchanged: ``scripts/start_engine.sh`` (which
``start_production.sh`` and the deployment files run) passes these flags to vLLM's OpenAI server, and the in-process
engine parses the same list with vLLM's own argument parser. ``python -m ocr_api.engines.vllm_flags`` prints them one
per line for the shell, in the engine's Python: the guard's processor is the one the vLLM installed there can run
(``--runner v1|v2`` names it instead, to print the flags for another machine).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ocr_api.profiles import DEFAULT_CHECKPOINTS, layout_mismatch
from ocr_api.settings import ConfigError, Settings

# The guard as each model runner loads it. Model Runner V1 (vLLM 0.32 and 0.33; the only one of the CPU build) runs
# DeepSeek's own class, the one the authors' scripts use; Model Runner V2 (a CUDA machine's default on 0.32 and 0.33,
# the only runner from 0.34, which also deleted DeepSeek's class) loads only processors written for its interface:
# the project's own, ocr_guard/vllm_v2.py, the same rule (docs/DEPLOYMENT.md).
GUARD_PROCESSORS: dict[str, str] = {
    "v1": "vllm.model_executor.models.deepseek_ocr:NGramPerReqLogitsProcessor",
    "v2": "ocr_guard.vllm_v2:NoRepeatNGramGuard",
}

# The DeepSeek recipe, less the guard's processor (it depends on the runner): no prefix or multimodal caches, which
# only cost memory when every request carries a different page.
RECIPE_FLAGS: tuple[str, ...] = ("--no-enable-prefix-caching", "--mm-processor-cache-gb", "0")
# The service's own: vLLM starts waiting pages in the order of their priority, which the service sets so that a
# person's page goes before job pages and a client with few pages at the engine before one with many (see
# ocr_api/admission.py, EnginePriorities). vLLM's default, fcfs, accepts the priorities and ignores them.
SHARING_FLAGS: tuple[str, ...] = ("--scheduling-policy", "priority")

# What an operator is told when an engine lacks the guard.
UNGUARDED_ADVICE = (
    "Start vLLM with the service's flags (scripts/start_engine.sh; by hand, the line for your vLLM version in "
    f"docs/DEPLOYMENT.md: --logits-processors {GUARD_PROCESSORS['v2']} with this project's ocr_guard/ on vLLM's "
    f"PYTHONPATH, or {GUARD_PROCESSORS['v1']} where vLLM runs Model Runner V1), or set ALLOW_UNGUARDED_ENGINE=1 to "
    "use it anyway (dangerous: pages can loop to the token limit)."
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
    """Return the engine flags but the guard's: model, recipe, scheduling policy, context length, GPU settings, then
    VLLM_EXTRA_ARGS (later flags win)."""
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
        "--model", model_for(settings), *RECIPE_FLAGS, *SHARING_FLAGS, "--max-model-len", str(settings.max_model_len),
        *gpu, *extra,
    ]  # fmt: skip


def with_guard(flags: Sequence[str], runner: str) -> list[str]:
    """Return ``flags`` with the guard's processor for ``runner`` (v1 or v2) after the model, before the rest (so a
    ``--logits-processors`` in VLLM_EXTRA_ARGS still wins)."""
    return [*flags[:2], "--logits-processors", GUARD_PROCESSORS[runner], *flags[2:]]


def _vllm_missing(exc: ImportError) -> ConfigError:
    return ConfigError(
        f"the vLLM engine needs vLLM, which is not importable in this Python ({exc}). Install requirements-vllm.txt "
        "on a CUDA machine, or use OCR_ENGINE=transformers."
    )


def vllm_engine_args(flags: Sequence[str]) -> Any:
    """Return vLLM's AsyncEngineArgs for ``flags``, parsed by vLLM's own parser (in the engine's Python)."""
    try:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError as exc:
        raise _vllm_missing(exc) from None
    parser = AsyncEngineArgs.add_cli_args(FlexibleArgumentParser(prog="VLLM_EXTRA_ARGS", exit_on_error=False))
    try:
        args = parser.parse_args(list(flags))
    except (SystemExit, Exception) as exc:  # noqa: BLE001 - argparse reports bad flags by exiting
        raise ConfigError(f"VLLM_EXTRA_ARGS holds a flag vLLM's engine does not accept: {exc}") from None
    return AsyncEngineArgs.from_cli_args(args)


def installed_runner(flags: Sequence[str]) -> tuple[str, str]:
    """Return the model runner (v1 or v2) the vLLM installed here will run with ``flags`` in this environment, and
    how that was found: vLLM's own decision where it has one (0.32, 0.33), else its only runner (0.34 on)."""
    try:
        import vllm
        from vllm.config.vllm import VllmConfig
    except ImportError as exc:
        raise _vllm_missing(exc) from None
    if not hasattr(VllmConfig, "use_v2_model_runner"):
        return "v2", f"vLLM {vllm.__version__} has Model Runner V2 alone"
    engine_args = vllm_engine_args(flags)
    try:
        config = engine_args.create_engine_config()
    except Exception as exc:  # noqa: BLE001 - whatever vLLM refuses, one line that says so
        detail = f"{type(exc).__name__}: {str(exc)[:500]}"
        raise ConfigError(f"vLLM cannot configure an engine with these flags: {detail}") from None
    runner = "v2" if config.use_v2_model_runner else "v1"
    return runner, f"vLLM {vllm.__version__} chose Model Runner {runner.upper()} for these flags"


def guard_import_path() -> str:
    """Return the folder that holds ``ocr_guard``, for the PYTHONPATH of vLLM's processes."""
    spec = importlib.util.find_spec("ocr_guard")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("ocr_guard (this project's repetition guard for vLLM) is not importable here")
    return str(Path(next(iter(spec.submodule_search_locations))).parent)


def with_guard_importable(environment: dict[str, str]) -> dict[str, str]:
    """Return ``environment`` with ocr_guard's folder first on PYTHONPATH (vLLM imports the processor by name in
    each of its processes)."""
    path = [guard_import_path(), *filter(None, environment.get("PYTHONPATH", "").split(os.pathsep))]
    return {**environment, "PYTHONPATH": os.pathsep.join(dict.fromkeys(path))}


def main(argv: list[str] | None = None) -> int:
    """Print the engine's flags one per line; exit 1 with one clear line on bad settings or a checkpoint vLLM cannot
    load."""
    parser = argparse.ArgumentParser(prog="python -m ocr_api.engines.vllm_flags", description=main.__doc__)
    parser.add_argument(
        "--runner", choices=["auto", "v1", "v2"], default="auto",
        help="the model runner whose guard to name (auto: ask the vLLM installed here)",
    )  # fmt: skip
    parser.add_argument(
        "--check", action="store_true",
        help="check the settings and the checkpoint's layout only: print nothing, import no vLLM",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        flags = engine_flags(settings)
        mismatch = layout_mismatch("vllm", model_for(settings))
        if mismatch:
            raise ConfigError(mismatch)
        if args.check:
            return 0
        runner, why = _runner_asked_on_stderr(flags) if args.runner == "auto" else (args.runner, "as asked")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"vllm_flags: the guard for Model Runner {runner.upper()}: {why}", file=sys.stderr)
    print("\n".join(with_guard(flags, runner)))
    return 0


def _runner_asked_on_stderr(flags: Sequence[str]) -> tuple[str, str]:
    """installed_runner, with whatever vLLM prints while deciding (its log goes to standard output) sent to standard
    error, so that standard output holds the flags alone for the shell."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        return installed_runner(flags)
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


if __name__ == "__main__":
    sys.exit(main())
