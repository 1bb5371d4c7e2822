"""The transformers engine on a GPU: a full-size DeepSeek-OCR-2 with random weights, pages/s and GPU memory at batch
1, 8 and 32 for a 300-DPI A4 page, and the dtype the engine loads it in.

For a session lent a GPU machine (the device tool); it needs nothing from a hub. It builds the model with the shapes
published for deepseek-ai/DeepSeek-OCR-2 (transcribed below, not read from the checkpoint: about 3.4 B parameters),
random weights, on the GPU; saves it with a byte-level tokenizer carrying the model's special tokens; loads it through
``TransformersEngine.load()`` as the service does (bfloat16 on CUDA: ``TORCH_DTYPE=auto``); then sends ``batch`` pages
at once, each what the service sends for a synthetic 300-DPI A4 text page (shrunk to ``engine_size``: a 2x3 tile grid,
1,131 prompt tokens), with the model's guard, and times until every page is answered. Random weights never end a page,
so each runs to ``--max-tokens``: pages/s here is decode-bound at that length; real pages stop earlier or later.
It says nothing of recognition quality, and the vLLM engine (the production one) is not measured: vLLM cannot be
carried to that machine.

On the device machine (PyTorch and transformers 5.17 there; the pinned 5.19 travels as a wheel):

    scripts/gpu_wheels.sh        # here, once: the wheels into .whl/ (ignored by git)
    # device run, carry [".whl"]:
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \\
      .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && PYTHONUNBUFFERED=1 python3 -m bench.gpu_transformers \\
      --out "$OUT/gpu_transformers.json"

Here, to check the script itself on the CPU with the tiny model: ``.venv/bin/python -m bench.gpu_transformers
--size tiny --device cpu --batches 1,2 --max-tokens 4``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from ocr_api.engines import EngineRequest, run_batch
from ocr_api.engines.transformers_engine import TransformersEngine
from ocr_api.guard import GuardSettings
from ocr_api.profiles import PROFILES
from ocr_api.tiling import engine_size
from ocr_dev.tiny_model import IMAGE, build_config, build_tokenizer

A4_300_DPI = (2480, 3508)
PROMPT = "<image>\n<|grounding|>Convert the document to markdown."

# deepseek-ai/DeepSeek-OCR-2's published config.json, in transformers' names: SAM ViT-B and a Qwen2-0.5B-sized
# encoder for vision, the DeepSeek-3B-MoE decoder (64 routed experts, 6 a token, 2 shared, about 570 M active).
FULL_VISION = {
    "sam_config": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                   "global_attn_indexes": [2, 5, 8, 11], "window_size": 14, "output_channels": 256,
                   "downsample_channels": [512, 896]},
    "encoder_config": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                       "num_attention_heads": 14, "num_key_value_heads": 2},
}  # fmt: skip
FULL_TEXT = {
    "vocab_size": 129280, "hidden_size": 1280, "intermediate_size": 6848, "moe_intermediate_size": 896,
    "num_hidden_layers": 12, "num_attention_heads": 10, "num_key_value_heads": 10, "n_routed_experts": 64,
    "num_experts_per_tok": 6, "n_shared_experts": 2, "mlp_layer_types": ["dense"] + ["sparse"] * 11,
    "max_position_embeddings": 8192,
}  # fmt: skip


def write_model(directory: Path, size: str, device: str) -> int:
    """Write a random-weight DeepSeek-OCR-2 of ``size`` (full or tiny) to ``directory``; return its parameters."""
    import torch
    from transformers import (
        DeepseekOcr2Config,
        DeepseekOcr2ForConditionalGeneration,
        DeepseekOcr2ImageProcessorPil,
        DeepseekOcr2Processor,
    )

    tokenizer = build_tokenizer()
    if size == "tiny":
        config = build_config(tokenizer)
    else:
        ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
        config = DeepseekOcr2Config(
            image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
            vision_config={**FULL_VISION, "encoder_config": {**FULL_VISION["encoder_config"], "vocab_size": 129280}},
            text_config={**FULL_TEXT, **ids},
        )
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    with torch.device(device):  # made where it runs: 3.4 B parameters initialised on a CPU take minutes
        model = DeepseekOcr2ForConditionalGeneration(config).to(dtype).eval()
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    parameters = sum(parameter.numel() for parameter in model.parameters())
    model.save_pretrained(directory)
    DeepseekOcr2Processor(image_processor=DeepseekOcr2ImageProcessorPil(), tokenizer=tokenizer).save_pretrained(
        directory
    )
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return parameters


def a4_page(seed: int = 0) -> Image.Image:
    """A 300-DPI A4 page of 8-point text lines, as a scan of a dense document would be, at the size the service sends
    it (``engine_size``)."""
    rng = random.Random(seed)
    page = Image.new("L", A4_300_DPI, 255)
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default(size=33)  # 8 pt at 300 DPI
    words = ["document", "service", "engine", "page", "model", "table", "figure", "the", "of", "and", "2026", "42"]
    for top in range(240, A4_300_DPI[1] - 240, 50):
        draw.text((200, top), " ".join(rng.choice(words) for _ in range(16)), fill=0, font=font)
    return page.convert("RGB").resize(engine_size(A4_300_DPI, PROFILES["deepseek-ocr-2"]), Image.Resampling.LANCZOS)


def measure(engine: TransformersEngine, page: Image.Image, batch: int, max_tokens: int) -> dict[str, Any]:
    """Send ``batch`` pages at once and time them to the last answer; peak GPU memory over that time."""
    import torch

    guard = GuardSettings(20, 90, engine.whitelist_token_ids)  # DeepSeek-OCR-2's profile
    requests = [EngineRequest(page, PROMPT, max_tokens, guard) for _ in range(batch)]
    cuda = engine.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    outputs = run_batch(engine, requests)
    seconds = time.perf_counter() - started
    generated = sum(output.completion_tokens for output in outputs)
    return {
        "batch": batch,
        "seconds": round(seconds, 2),
        "pages_per_s": round(batch / seconds, 3),
        "tokens_per_s": round(generated / seconds, 1),
        "prompt_tokens": outputs[0].prompt_tokens,
        "completion_tokens": outputs[0].completion_tokens,
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--out", type=Path, help="write the figures here as JSON too")
    args = parser.parse_args()
    import torch
    import transformers

    report: dict[str, Any] = {
        "model": f"DeepSeek-OCR-2 shapes ({args.size}), random weights", "max_tokens": args.max_tokens,
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor(),
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as directory:
        started = time.perf_counter()
        report["parameters"] = write_model(Path(directory), args.size, args.device)
        report["write_s"] = round(time.perf_counter() - started, 1)
        engine = TransformersEngine(directory, args.device, max_batch=max(int(b) for b in args.batches.split(",")))
        started = time.perf_counter()
        engine.load()
        report["load_s"] = round(time.perf_counter() - started, 1)
        report["dtype"] = str(engine._model.dtype)  # what TORCH_DTYPE=auto gives on this device
        report["guard"] = engine.guard_checks()["in-process"].state
        page = a4_page()
        report["page_sent"] = list(page.size)
        print(json.dumps(report), flush=True)
        measure(engine, page, 1, 8)  # warm-up: kernels, allocator
        report["runs"] = []
        for batch in (int(b) for b in args.batches.split(",")):
            report["runs"].append(measure(engine, page, batch, args.max_tokens))
            print(json.dumps(report["runs"][-1]), flush=True)
        engine.close()
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
