"""What vLLM would decide on a CUDA machine for the flags and environment it is given: its model runner, and whether
that runner accepts the repetition guard.

vLLM's CPU build never has Triton, so it always runs the V1 model runner; on a CUDA machine vLLM picks Model Runner V2
by default, which loads logits processors through another loader. This runs vLLM's own code as it would run there: the
flags parsed by vLLM's parser, the engine configuration built by vLLM, then Triton reported present (the one input of
the choice a CPU lacks) and vLLM's own choice of runner, its own check of that runner's support, and its own loader of
the runner's logits processors, as the engine's front end builds it at start-up, given the guard's probe and a real
page's guard. Run in an environment with vLLM (``.venv-vllm``), in the environment under test:

    python -m ocr_dev.runner_decision [--in-process] FLAG...

Prints one JSON line: ``runner`` (v1 or v2), ``guard_loaded`` (the runner's loader accepted the processor),
``probe_refused`` and ``page_accepted`` (what its validator said of ngram_size 0 and of a page's guard), ``error``.
``--in-process``: the flags go through the in-process engine's own preparation (ocr_api/engines/vllm_engine.py), which
sets the environment it starts vLLM with, instead of being taken as they are.
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace
from typing import Any

PAGE_GUARD = {"ngram_size": 20, "window_size": 90, "whitelist_token_ids": [128821, 128822]}


def decide(flags: list[str], in_process: bool = False) -> dict[str, Any]:
    """Return what vLLM would do with ``flags`` (and this process's environment) on a machine with Triton."""
    if in_process:
        from ocr_api.engines.vllm_engine import vllm_engine_args

        engine_args = vllm_engine_args(flags)
    else:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        parser = AsyncEngineArgs.add_cli_args(FlexibleArgumentParser(exit_on_error=False))
        engine_args = AsyncEngineArgs.from_cli_args(parser.parse_args(flags))
    import vllm.config.vllm as vllm_config_module
    from vllm import SamplingParams
    from vllm.v1.engine.input_processor import InputProcessor

    vllm_config_module.HAS_TRITON = True  # what a CUDA machine has and this one lacks
    config = engine_args.create_engine_config()
    runner = "v2" if config.use_v2_model_runner else "v1"
    decision: dict[str, Any] = {"runner": runner, "guard_loaded": False, "probe_refused": False,
                                "page_accepted": False, "error": None}  # fmt: skip
    try:
        # What VllmConfig.__post_init__ checks for the runner it chose, then what the front end builds at start-up.
        (config._validate_v2_model_runner if runner == "v2" else config._validate_v1_model_runner)()
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
    in_process = argv[:1] == ["--in-process"]
    print(json.dumps(decide(argv[1:] if in_process else argv, in_process)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
