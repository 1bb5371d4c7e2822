"""vLLM's CPU build with dummy weights: one image in the dtype vLLM picks (bfloat16) against float32.

The tests run the real vLLM on CPU (tests/test_vllm.py). vLLM's CPU build downcasts the tiny checkpoint's float32
to bfloat16 unless told otherwise, and a CPU without AVX-512 emulates bfloat16. This starts the vLLM server the
way ``scripts/start_engine.sh`` does, with the tests' flags (ocr_dev.tiny_vllm_model.CPU_TRIAL_FLAGS) and a tiny
DeepSeek-OCR-2, once per dtype in the same run, and times ``--requests`` chat completions of hopper.png (8
tokens, one after another) against each. Random weights and a full-size vision tower: the figure is the vision
tower's CPU cost, not recognition or GPU speed.

    .venv/bin/python -m bench.vllm_cpu_dtype             # about 6 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import requests

from ocr_dev.servers import REPO, environment, start, stop, wait_until
from ocr_dev.tiny_vllm_model import CPU_TRIAL_ENV, CPU_TRIAL_FLAGS, write_tiny_vllm_model

HOPPER = Path(os.environ.get("OCR_CORPUS_DIR", REPO.parent / "shared" / "corpus")) / "images" / "hopper.png"
DTYPES = {"bfloat16 (vLLM's choice)": "auto", "float32": "float32"}


def seconds_per_image(model: Path, dtype: str, work: Path, requests_: int) -> list[float]:
    """Start the server with ``--dtype dtype`` and return the seconds of each chat completion."""
    flags = re.sub(r"--dtype \S+", f"--dtype {dtype}", CPU_TRIAL_FLAGS)
    env = environment(
        work,
        ENGINE_PYTHON=str(REPO / ".venv-vllm" / "bin" / "python"),
        DEEPSEEK_MODEL_NAME=str(model),
        VLLM_EXTRA_ARGS=flags,
        **CPU_TRIAL_ENV,
    )
    env["VLLM_PORT"] = env["PORT"]
    url = f"http://127.0.0.1:{env['PORT']}"
    image = "data:image/png;base64," + base64.b64encode(HOPPER.read_bytes()).decode()
    body = {
        "model": str(model),
        "max_tokens": 8,
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                                  {"type": "text", "text": "Free OCR."}]}],
    }  # fmt: skip
    timings = []
    log = work / f"vllm-{dtype}.log"
    process = start("scripts/start_engine.sh", env, log)

    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the vLLM server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        return requests.get(f"{url}/health", timeout=2).ok

    try:
        wait_until(healthy, timeout_s=600)
        for _ in range(requests_):
            started = time.perf_counter()
            response = requests.post(f"{url}/v1/chat/completions", json=body, timeout=900)
            response.raise_for_status()
            timings.append(time.perf_counter() - started)
    finally:
        stop(process, timeout_s=120)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=2, help="chat completions per dtype")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        model = write_tiny_vllm_model(work / "tiny-deepseek-ocr-2", "v2")
        results = {name: seconds_per_image(model, dtype, work, args.requests) for name, dtype in DTYPES.items()}
    for name, timings in results.items():
        each = ", ".join(f"{t:.1f} s" for t in timings)
        print(f"{name:26} {each}  (median {statistics.median(timings):.1f} s)")
    slow, fast = (statistics.median(timings) for timings in results.values())
    print(f"float32 is {slow / fast:.2f}x the speed of bfloat16 here")


if __name__ == "__main__":
    main()
