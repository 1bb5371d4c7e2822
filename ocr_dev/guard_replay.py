"""The project's Model Runner V2 guard (ocr_guard/vllm_v2.py) stepped through decoding as vLLM's V2 sampler lays the
batch out, on CPU tensors, and loaded by vLLM's own V2 loader. Run in an environment with vLLM (``.venv-vllm``; with
an unpacked vLLM wheel first on PYTHONPATH for another release):

    python -m ocr_dev.guard_replay replay [--seed N] [--steps N]   each row's bans against ocr_api/guard.py
    python -m ocr_dev.guard_replay drafts [--seed N]               the same under speculative decoding's layout
    python -m ocr_dev.guard_replay load FQCN                       vLLM's V2 loader and validator on the class

Each prints one JSON line. The model runner's own buffers pin host memory through CUDA, so the request state here is
plain CPU tensors in the same layout: ``all_token_ids[slot, :total_len]`` (prompt, then output), ``prompt_len``,
``total_len``; each step's rows come in a new order, finished requests' slots are recycled, and some requests carry no
guard. What vLLM's runner does between steps (the forward pass, sampling) is a random choice of the next token.
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import sys
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from ocr_api.guard import banned_next_tokens

GUARD_CLASS = "ocr_guard.vllm_v2:NoRepeatNGramGuard"
VOCABULARY = 64  # small, so that random histories repeat n-grams often
IMAGE_TOKEN = 7  # the prompt's hundreds of image placeholders: repeats the guard must never look at
MAX_LENGTH = 600


@dataclass
class Request:
    """One request in a slot: its guard arguments (None: unguarded), its prompt and what it has generated."""

    guard: dict[str, Any] | None
    prompt: list[int]
    generated: list[int] = field(default_factory=list)
    remaining: int = 0


def request_state(slots: int, max_length: int = MAX_LENGTH, vocabulary: int = VOCABULARY) -> Any:
    """What vLLM's LogitsProcRequestState holds, as plain CPU tensors (its buffers need a CUDA driver)."""
    import torch
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcRequestState

    def held(tensor: Any) -> SimpleNamespace:
        return SimpleNamespace(gpu=tensor, np=tensor.numpy(), cpu=tensor)

    return LogitsProcRequestState(
        device=torch.device("cpu"),
        max_num_reqs=slots,
        vocab_size=vocabulary,
        all_token_ids=held(torch.zeros((slots, max_length), dtype=torch.int32)),
        prompt_len=held(torch.zeros(slots, dtype=torch.int32)),
        prefill_len=held(torch.zeros(slots, dtype=torch.int32)),
        total_len=held(torch.zeros(slots, dtype=torch.int32)),
    )


def context(slots_in_order: list[int], states: Any, input_ids: list[int] | None = None,
            local_pos: list[int] | None = None) -> Any:  # fmt: skip
    """This step's LogitsContext: one row per request (or per draft token) in the order given."""
    import numpy as np
    import torch
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsContext

    rows = torch.tensor(slots_in_order, dtype=torch.int32)
    unique = list(dict.fromkeys(slots_in_order))
    local = torch.tensor(local_pos or [0] * len(slots_in_order), dtype=torch.int32)
    total = states.total_len.gpu[rows.long()]
    if input_ids is None:
        input_ids = [int(states.all_token_ids.gpu[slot, max(0, int(states.total_len.gpu[slot]) - 1)])
                     for slot in slots_in_order]  # fmt: skip
    lengths = {slot: int(states.total_len.gpu[slot]) for slot in unique}
    drafts = {slot: slots_in_order.count(slot) - 1 for slot in unique}
    return LogitsContext(
        expanded_idx_mapping=rows,
        idx_mapping=torch.tensor(unique, dtype=torch.int32),
        idx_mapping_np=np.array(unique, dtype=np.int32),
        expanded_local_pos=local,
        input_ids=torch.tensor(input_ids, dtype=torch.int32),
        pos=total.long() - 1 + local.long(),
        seq_lens_upper_bound_np=np.array([lengths[slot] + drafts[slot] for slot in unique], dtype=np.int32),
    )


def sampling_params(guard: dict[str, Any] | None) -> Any:
    from vllm import SamplingParams

    return SamplingParams(max_tokens=64, extra_args=dict(guard) if guard is not None else None)


def random_guard(rng: random.Random) -> dict[str, Any] | None:
    """A request's guard as clients send it: sometimes none, sometimes without window_size (100) or whitelist."""
    if rng.random() < 0.2:
        return None
    guard: dict[str, Any] = {"ngram_size": rng.choice([1, 2, 2, 3, 3, 4, 5, 8, 20])}
    if rng.random() < 0.8:
        guard["window_size"] = rng.choice([1, 2, 3, 5, 8, 13, 30, 50, 90, 100])
    if rng.random() < 0.7:
        guard["whitelist_token_ids"] = rng.sample(range(VOCABULARY), rng.choice([0, 1, 2, 5]))
    return guard


def random_prompt(rng: random.Random) -> list[int]:
    """Text, hundreds of identical image tokens, text: a prompt full of the repeats the guard must not look at."""
    text = [rng.randrange(VOCABULARY) for _ in range(rng.randrange(1, 8))]
    return text + [IMAGE_TOKEN] * rng.randrange(0, 300) + text * rng.randrange(1, 4)


def banned_in(logits_row: Any) -> set[int]:
    import torch

    return {int(token) for token in torch.nonzero(logits_row == float("-inf")).flatten()}


def expected_bans(request: Request, generated: list[int]) -> set[int]:
    if request.guard is None:
        return set()
    return banned_next_tokens(
        generated,
        request.guard["ngram_size"],
        request.guard.get("window_size", 100),
        request.guard.get("whitelist_token_ids") or (),
    )


def replay(seed: int = 0, steps: int = 300, slots: int = 12) -> dict[str, Any]:
    """Decode random requests through the guard; count the rows whose bans differ from banned_next_tokens."""
    import torch

    rng = random.Random(seed)
    torch.manual_seed(seed)
    states = request_state(slots)
    guard = guard_class()(SimpleNamespace(), states)
    active: dict[int, Request] = {}
    rows_checked = rows_with_bans = bans = mismatched = recycled = 0
    first_mismatch: dict[str, Any] | None = None
    for _ in range(steps):
        admitted = False
        for slot in range(slots):
            if slot not in active and rng.random() < 0.5:
                recycled += int(states.total_len.gpu[slot]) > 0
                request = Request(random_guard(rng), random_prompt(rng), remaining=rng.randrange(5, 160))
                active[slot] = request
                states.all_token_ids.gpu[slot].fill_(rng.randrange(VOCABULARY))  # a previous occupant's leftovers
                states.all_token_ids.gpu[slot, : len(request.prompt)] = torch.tensor(request.prompt)
                states.prompt_len.gpu[slot] = len(request.prompt)
                states.prefill_len.gpu[slot] = len(request.prompt)
                states.total_len.gpu[slot] = len(request.prompt)
                guard.add_request(slot, sampling_params(request.guard))
                admitted = True
        if admitted:
            guard.apply_staged_writes()
        order = list(active)
        rng.shuffle(order)
        logits = torch.randn(len(order), VOCABULARY)
        result = guard.apply(logits, context(order, states))
        for row, slot in enumerate(order):
            request = active[slot]
            got, expected = banned_in(result[row]), expected_bans(request, request.generated)
            rows_checked += 1
            rows_with_bans += bool(expected)
            bans += len(expected)
            if got != expected:
                mismatched += 1
                first_mismatch = first_mismatch or {"guard": request.guard, "generated": request.generated,
                                                    "got": sorted(got), "expected": sorted(expected)}  # fmt: skip
            # The next token: often a repeat of a recent one (banned or not), so that histories hold many n-grams.
            recent = request.generated[-8:]
            token = rng.choice(recent) if recent and rng.random() < 0.6 else rng.randrange(VOCABULARY)
            request.generated.append(token)
            states.all_token_ids.gpu[slot, int(states.total_len.gpu[slot])] = token
            states.total_len.gpu[slot] += 1
            request.remaining -= 1
            if request.remaining <= 0 or int(states.total_len.gpu[slot]) >= MAX_LENGTH - 1:
                del active[slot]
    return {"rows_checked": rows_checked, "rows_with_bans": rows_with_bans, "bans": bans, "mismatched": mismatched,
            "slots_recycled": recycled, "first_mismatch": first_mismatch}  # fmt: skip


def drafts(seed: int = 0, cases: int = 200) -> dict[str, Any]:
    """Speculative decoding's layout: a request's rows are its committed tokens plus 0, 1, 2... draft tokens, which
    live only in ``input_ids``; row k's bans must be those of the output followed by the first k drafts."""
    import torch

    rng = random.Random(seed)
    states = request_state(4)
    guard = guard_class()(SimpleNamespace(), states)
    mismatched = rows_checked = bans = 0
    for _ in range(cases):
        requests = {slot: Request(random_guard(rng) or {"ngram_size": 2}, random_prompt(rng)) for slot in range(4)}
        order, input_ids, local_pos, expected = [], [], [], []
        for slot, request in requests.items():
            request.generated = [rng.randrange(VOCABULARY // 4) for _ in range(rng.randrange(0, 60))]
            committed = request.prompt + request.generated
            states.all_token_ids.gpu[slot, : len(committed)] = torch.tensor(committed)
            states.prompt_len.gpu[slot] = len(request.prompt)
            states.total_len.gpu[slot] = len(committed)
            guard.add_request(slot, sampling_params(request.guard))
            draft = [rng.randrange(VOCABULARY // 4) for _ in range(rng.randrange(0, 4))]
            for k in range(len(draft) + 1):
                order.append(slot)
                local_pos.append(k)
                input_ids.append(committed[-1] if k == 0 else draft[k - 1])
                expected.append(expected_bans(request, request.generated + draft[:k]))
        guard.apply_staged_writes()
        logits = torch.randn(len(order), VOCABULARY)
        result = guard.apply(logits, context(order, states, input_ids, local_pos))
        for row, wanted in enumerate(expected):
            rows_checked += 1
            bans += len(wanted)
            mismatched += banned_in(result[row]) != wanted
    return {"rows_checked": rows_checked, "bans": bans, "mismatched": mismatched}


PAGE_GUARD = {"ngram_size": 20, "window_size": 90, "whitelist_token_ids": [5, 6]}


def load(fqcn: str) -> dict[str, Any]:
    """What vLLM's V2 loader and validator make of ``fqcn``: loaded, built, the service's probe refused (and why), a
    page's guard accepted, and one step of the built processor banning the repeat after 5 6 5 with a bigram guard."""
    import torch
    import vllm
    from vllm.v1.worker.gpu.sample.logits_processor import loader

    outcome: dict[str, Any] = {"vllm": vllm.__version__, "loaded": False, "probe_refused": False, "refusal": None,
                               "page_accepted": False, "banned_after_5_6_5": None, "error": None}  # fmt: skip
    try:
        validate = loader.build_custom_logits_processors_params_validator([fqcn])
        classes = loader._load_v2_logitsprocs([fqcn])
    except (ValueError, RuntimeError, AttributeError) as exc:
        outcome["error"] = f"{type(exc).__name__}: {exc}"
        return outcome
    outcome["loaded"] = True
    outcome["refusal"] = _refusal(validate, sampling_params({"ngram_size": 0}))
    outcome["probe_refused"] = outcome["refusal"] is not None
    outcome["page_accepted"] = _refusal(validate, sampling_params(PAGE_GUARD)) is None
    states = request_state(2)
    processor = classes[-1](SimpleNamespace(), states)
    states.all_token_ids.gpu[0, :5] = torch.tensor([IMAGE_TOKEN, IMAGE_TOKEN, 5, 6, 5])
    states.prompt_len.gpu[0] = 2
    states.total_len.gpu[0] = 5
    processor.add_request(0, sampling_params({"ngram_size": 2, "window_size": 8}))
    processor.apply_staged_writes()
    result = processor.apply(torch.zeros(1, VOCABULARY), context([0], states))
    outcome["banned_after_5_6_5"] = sorted(banned_in(result[0]))
    return outcome


def _refusal(validate: Any, params: Any) -> str | None:
    from vllm.exceptions import VLLMValidationError

    try:
        validate(params)
    except (VLLMValidationError, ValueError) as exc:
        return str(exc)
    return None


def guard_class() -> Any:
    """The class GUARD_CLASS names, imported as vLLM would."""
    module, name = GUARD_CLASS.split(":")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m ocr_dev.guard_replay")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("replay", "drafts"):
        command = commands.add_parser(name)
        command.add_argument("--seed", type=int, default=0)
    commands.choices["replay"].add_argument("--steps", type=int, default=300)
    commands.add_parser("load").add_argument("fqcn", nargs="?", default=GUARD_CLASS)
    args = parser.parse_args(argv)
    if args.command == "replay":
        print(json.dumps(replay(args.seed, args.steps)))
    elif args.command == "drafts":
        print(json.dumps(drafts(args.seed)))
    else:
        print(json.dumps(load(args.fqcn)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
