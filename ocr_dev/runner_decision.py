"""What vLLM would decide on a CUDA machine for the flags and environment it is given: its model runner, and whether
that runner accepts the repetition guard.

vLLM's CPU build never has Triton, so it always runs the V1 model runner; on a CUDA machine vLLM 0.32 and 0.33 pick
Model Runner V2 by default (0.34 has no other), which loads logits processors through another loader. This runs
vLLM's own code as it would run there: Triton reported present (the one input of the choice a CPU lacks), the flags
parsed by vLLM's parser, the engine configuration built by vLLM, its own choice of runner, its own check of that
runner's support, and its own loader of the runner's logits processors, as the engine's front end builds it at
start-up, given the guard's probe and a real page's guard. Run in an environment with vLLM (``.venv-vllm``; an
unpacked vLLM wheel first on PYTHONPATH for another release), in the environment under test:

    python -m ocr_dev.runner_decision decide [--in-process] FLAG...
    python -m ocr_dev.runner_decision as-gpu -m MODULE ARG...

``decide`` prints one JSON line: ``runner`` (v1 or v2), ``guard_loaded`` (the runner's loader accepted the
processor), ``probe_refused`` and ``page_accepted`` (what its validator said of ngram_size 0 and of a page's guard),
``error``. ``--in-process``: the flags go through the in-process engine's own preparation
(ocr_api/engines/vllm_engine.py), which adds the guard for the runner vLLM chooses, instead of being taken as they
are. ``as-gpu`` runs MODULE as ``python -m`` would, on the same pretended GPU machine (what scripts/start_engine.sh's
``python -m ocr_api.engines.vllm_flags`` prints there).
"""

from __future__ import annotations

import json
import runpy
import sys
from types import SimpleNamespace
from typing import Any

PAGE_GUARD = {"ngram_size": 20, "window_size": 90, "whitelist_token_ids": [128821, 128822]}


def pretend_gpu() -> None:
    """Make vLLM's runner choice see what a CUDA machine has and this one lacks: Triton."""
    import vllm.config.vllm as vllm_config_module

    vllm_config_module.HAS_TRITON = True


def decide(flags: list[str], in_process: bool = False) -> dict[str, Any]:
    """Return what vLLM would do with ``flags`` (and this process's environment) on a machine with Triton."""
    pretend_gpu()
    from ocr_api.engines.vllm_flags import vllm_engine_args

    if in_process:
        from ocr_api.engines.vllm_engine import VllmEngine

        flags = VllmEngine(flags)._flags_with_guard()
    from vllm import SamplingParams
    from vllm.v1.engine.input_processor import InputProcessor

    config = vllm_engine_args(flags).create_engine_config()
    runner = "v2" if getattr(config, "use_v2_model_runner", True) else "v1"
    decision: dict[str, Any] = {"runner": runner, "guard_loaded": False, "probe_refused": False,
                                "page_accepted": False, "error": None}  # fmt: skip
    try:
        # What VllmConfig.__post_init__ checks for the runner it chose, then what the front end builds at start-up.
        check = getattr(config, f"_validate_{runner}_model_runner", None)
        if check is not None:
            check()
        front_end = SimpleNamespace(vllm_config=config, model_config=config.model_config)
        validate = InputProcessor._build_logits_processors_params_validator(front_end)
    except (ValueError, RuntimeError) as exc:
        decision["error"] = f"{type(exc).__name__}: {exc}"
        return decision
    decision["guard_loaded"] = bool(config.model_config.logits_processors)
    decision["probe_refused"] = _refused(validate, SamplingParams(max_tokens=1, extra_args={"ngram_size": 0}))
    decision["page_accepted"] = not _refused(validate, SamplingParams(max_tokens=8, extra_args=dict(PAGE_GUARD)))
    return decision


def _refused(validate: Any, params: Any) -> bool:
    from vllm.exceptions import VLLMValidationError

    try:
        validate(params)
    except (VLLMValidationError, ValueError):
        return True
    return False


def main(argv: list[str]) -> int:
    command, rest = argv[0], argv[1:]
    if command == "as-gpu":
        assert rest[:1] == ["-m"], "as-gpu -m MODULE ARG..."
        pretend_gpu()
        sys.argv = [rest[1], *rest[2:]]
        runpy.run_module(rest[1], run_name="__main__", alter_sys=True)
        return 0
    in_process = rest[:1] == ["--in-process"]
    print(json.dumps(decide(rest[1:] if in_process else rest, in_process)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
