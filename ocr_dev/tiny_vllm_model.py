"""Write a tiny DeepSeek-OCR (v1) or DeepSeek-OCR-2 checkpoint directory for vLLM's ``--load-format dummy``.

vLLM's DeepSeek-OCR classes build their full-size vision towers whatever the config says (v1: SAM-B + CLIP-L,
v2: SAM-B + a Qwen2-0.5B encoder), so only the language model shrinks. With dummy weights the directory needs
just ``config.json`` and tokenizer files. Run ``python -m ocr_dev.tiny_vllm_model DIR [--v2]`` to write one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ocr_dev.tiny_model import build_tokenizer

TEXT_WIDTH = 128
CONTEXT = 4096

# vLLM engine flags for such a directory on CPU (VLLM_EXTRA_ARGS; the in-process engine and the server take the
# same string). Memory is a share of NUMA node 0; profiling five full-size images is skipped (it is OOM-killed
# otherwise). float32: vLLM's CPU build otherwise downcasts to bfloat16, which a CPU without AVX-512 emulates
# (docs/PERFORMANCE.md, bench/vllm_cpu_dtype.py: an image 4x slower on a 2-core AMD EPYC with AVX2 only).
CPU_TRIAL_FLAGS = (
    "--load-format dummy --dtype float32 --gpu-memory-utilization 0.2 --skip-mm-profiling "
    "--limit-mm-per-prompt.image 1 --max-num-batched-tokens 2048 --max-model-len 4096"
)
# vLLM's CPU build keeps one of the two cores for its front end by default, which halves the vision tower's speed.
CPU_TRIAL_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "0-1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


# vLLM architecture and the width its vision tower hands the projector.
ARCHITECTURES = {"v1": ("DeepseekOCRForCausalLM", 2048), "v2": ("DeepseekOCR2ForCausalLM", 896)}


def build_config(tokenizer, version: str = "v1") -> dict:
    """Return config.json for vLLM's DeepSeek-OCR ``version`` with a tiny MoE language model."""
    architecture, vision_width = ARCHITECTURES[version]
    vocab_size = len(tokenizer)
    return {
        "architectures": [architecture],
        "model_type": "deepseek_vl_v2",
        "tile_tag": "2D",
        "global_view_pos": "head",
        "candidate_resolutions": [[1024, 1024]],
        "torch_dtype": "float32",
        "vision_config": {"image_size": 1024, "patch_size": 16, "width": 1024, "layers": 24, "heads": 16},
        "projector_config": {"projector_type": "linear", "input_dim": vision_width, "n_embed": TEXT_WIDTH},
        "language_config": {
            "architectures": ["DeepseekV2ForCausalLM"],
            "model_type": "deepseek_v2",
            "vocab_size": vocab_size,
            "hidden_size": TEXT_WIDTH,
            "intermediate_size": 256,
            "moe_intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "n_routed_experts": 4,
            "num_experts_per_tok": 2,
            "n_shared_experts": 1,
            "first_k_dense_replace": 1,
            # As in the real checkpoint; vLLM's CPU router needs the group sizes spelled out.
            "topk_method": "greedy",
            "n_group": 1,
            "topk_group": 1,
            "use_mla": False,
            "q_lora_rank": None,
            "kv_lora_rank": None,
            "qk_nope_head_dim": 0,
            "qk_rope_head_dim": 0,
            "v_head_dim": 0,
            "max_position_embeddings": CONTEXT,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "torch_dtype": "float32",
        },
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def write_tiny_vllm_model(directory: str | Path, version: str = "v1") -> Path:
    """Write config and tokenizer to ``directory`` and return it (no weights: vLLM makes dummy ones)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(directory)
    (directory / "config.json").write_text(json.dumps(build_config(tokenizer, version), indent=2))
    (directory / "TINY_RANDOM_MODEL.json").write_text(json.dumps({"weights": "dummy", "purpose": "tests only"}))
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", help="where to write the model")
    parser.add_argument("--v2", action="store_true", help="DeepSeek-OCR-2 instead of DeepSeek-OCR")
    args = parser.parse_args()
    print(write_tiny_vllm_model(args.directory, "v2" if args.v2 else "v1"))


if __name__ == "__main__":
    main()
