"""What the Model Runner V2 guard (ocr_guard/vllm_v2.py) costs per decoding step, on CPU tensors.

The V2 sampler calls the guard's ``apply`` once per step for the whole batch. This times it for 64 and 256 guarded
rows, 400 tokens into their output behind a 900-token prompt, with the authors' n-gram size (20) and windows of 90 and
100, on logits as wide as DeepSeek-OCR's vocabulary (129,280), beside, in the same run on the same batch:
- a processor that does nothing (what any custom processor costs the sampler at least);
- the float32 copy of the logits the V2 sampler makes each step before processors run (its own fixed cost);
- DeepSeek's V1 processor (``NoRepeatNGramLogitsProcessor``: a Python loop per row over its window), as Model Runner
  V1 runs it on each row, where the installed vLLM has it (0.32, 0.33).
Run in vLLM's environment (its torch, its interface)::

    .venv-vllm/bin/python -m bench.guard_cost              # about 30 s on 2 cores

CPU figures: a GPU runs the same tensor operations as kernels, at its own speed, which is not measured here.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from ocr_dev.guard_replay import IMAGE_TOKEN, context, guard_class, request_state, sampling_params

VOCABULARY = 129_280  # DeepSeek-OCR's
PROMPT_TOKENS, OUTPUT_TOKENS = 900, 400
WHITELIST = [128821, 128822]


def _seconds_per_call(call: Callable[[], Any], repeats: int) -> float:
    call()  # warm up
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - started) / repeats


def measure(rows: int, window: int, ngram_size: int = 20, repeats: int = 30) -> dict[str, Any]:
    """Seconds per step of each contender on one batch of ``rows`` guarded requests."""
    import torch
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor

    class NoOp(LogitsProcessor):
        def apply(self, logits: Any, ctx: Any) -> Any:
            return logits

    rng = random.Random(0)
    states = request_state(rows, PROMPT_TOKENS + OUTPUT_TOKENS + 1, VOCABULARY)
    guard = guard_class()(SimpleNamespace(), states)
    outputs = []
    for slot in range(rows):
        output = [rng.randrange(VOCABULARY) for _ in range(OUTPUT_TOKENS)]
        outputs.append(output)
        history = [IMAGE_TOKEN] * PROMPT_TOKENS + output
        states.all_token_ids.gpu[slot, : len(history)] = torch.tensor(history)
        states.prompt_len.gpu[slot] = PROMPT_TOKENS
        states.total_len.gpu[slot] = len(history)
        guard.add_request(slot, sampling_params({"ngram_size": ngram_size, "window_size": window,
                                                 "whitelist_token_ids": WHITELIST}))  # fmt: skip
    guard.apply_staged_writes()
    ctx = context(list(range(rows)), states)
    logits = torch.randn(rows, VOCABULARY)
    no_op = NoOp(SimpleNamespace(), states)
    seconds = {
        "no_op": _seconds_per_call(lambda: no_op.apply(logits, ctx), repeats),
        "logits_copy": _seconds_per_call(lambda: torch.empty_like(logits).copy_(logits), repeats),
        "guard_v2": _seconds_per_call(lambda: guard.apply(logits, ctx), repeats),
    }
    deepseek_v1 = _deepseek_v1(ngram_size, window)
    if deepseek_v1 is not None:

        def every_row() -> None:
            for row, output in enumerate(outputs):
                deepseek_v1(output, logits[row])

        seconds["deepseek_v1_per_row"] = _seconds_per_call(every_row, max(1, repeats // 3))
    return {"rows": rows, "window": window, "ngram_size": ngram_size, "torch_threads": torch.get_num_threads(),
            "seconds_per_step": seconds}  # fmt: skip


def _deepseek_v1(ngram_size: int, window: int) -> Callable[[list[int], Any], Any] | None:
    try:
        from vllm.model_executor.models.deepseek_ocr import NoRepeatNGramLogitsProcessor
    except ImportError:
        return None
    return NoRepeatNGramLogitsProcessor(ngram_size, window, set(WHITELIST))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.guard_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--windows", type=int, nargs="+", default=[90, 100])
    args = parser.parse_args()
    for rows in args.rows:
        for window in args.windows:
            print(json.dumps(measure(rows, window)), flush=True)


if __name__ == "__main__":
    main()
