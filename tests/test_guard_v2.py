"""The project's repetition guard for vLLM's Model Runner V2 (ocr_guard/vllm_v2.py), in vLLM's own code.

Stepped through decoding as the V2 sampler lays the batch out (ocr_dev/guard_replay.py: prompt then output in
``all_token_ids``, ``total_len`` growing, rows reordered every step, slots recycled, guarded and unguarded rows, prompts
full of repeats, speculative decoding's draft rows) and compared row by row with ocr_api/guard.py's
``banned_next_tokens``; then loaded by vLLM's own V2 loader and validator, from vLLM 0.32.0 (.venv-vllm) and from
vLLM 0.34.0 (its wheel's Python modules, .vllm-releases/, on .venv-vllm's torch). CPU tensors; a GPU runs the same
tensor operations on its own.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ocr_api.engines.vllm_flags import GUARD_PROCESSORS
from tests.conftest import REPO, vllm_python_or_skip, vllm_release_or_skip

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

VLLM_PYTHON = vllm_python_or_skip()
RELEASES = {"0.32.0": False, "0.34.0": True}  # True: its wheel's modules; False: .venv-vllm's own


def _guard_replay(*args: str, release: Path | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(path) for path in (release, REPO) if path)}
    run = subprocess.run([str(VLLM_PYTHON), "-m", "ocr_dev.guard_replay", *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def newest_release() -> Path:
    return vllm_release_or_skip("0.34.0")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_step_bans_exactly_what_the_authors_rule_bans(seed: int):
    replay = _guard_replay("replay", "--seed", str(seed))
    assert replay["mismatched"] == 0, replay["first_mismatch"]
    # The comparison means something: many rows had bans, and slots were handed to new requests.
    assert replay["rows_checked"] > 2000
    assert replay["rows_with_bans"] > 300
    assert replay["slots_recycled"] > 20


def test_draft_rows_see_the_drafts_before_them():
    drafts = _guard_replay("drafts")
    assert drafts["mismatched"] == 0
    assert drafts["bans"] > 500


def test_the_newest_vllms_interface_steps_the_same(newest_release: Path):
    replay = _guard_replay("replay", "--seed", "3", "--steps", "120", release=newest_release)
    assert replay["mismatched"] == 0, replay["first_mismatch"]
    assert replay["rows_with_bans"] > 100


@pytest.mark.parametrize("version", sorted(RELEASES))
def test_vllms_v2_loader_loads_it_and_its_validator_refuses_the_probe(version: str, request: pytest.FixtureRequest):
    release = request.getfixturevalue("newest_release") if RELEASES[version] else None
    outcome = _guard_replay("load", GUARD_PROCESSORS["v2"], release=release)
    assert outcome["vllm"] == version
    assert outcome["error"] is None
    assert outcome["loaded"]
    # The service's start-up probe (ngram_size 0) is refused in DeepSeek's words; a page's guard is accepted.
    assert outcome["refusal"] == "`ngram_size` has to be a strictly positive integer, got 0."
    assert outcome["page_accepted"]
    # Built by the loader and stepped once: after 5 6 5 a bigram guard bans 6 alone.
    assert outcome["banned_after_5_6_5"] == [6]


def test_deepseeks_class_is_v1_only_and_gone_from_the_newest_vllm(newest_release: Path):
    """Why the project owns its V2 guard: V2's loader refuses DeepSeek's class on 0.32, and 0.34 deleted it."""
    on_032 = _guard_replay("load", GUARD_PROCESSORS["v1"])
    assert "is not a subclass of vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor" in on_032["error"]
    on_034 = _guard_replay("load", GUARD_PROCESSORS["v1"], release=newest_release)
    assert on_034["error"].startswith("AttributeError")
    assert "NGramPerReqLogitsProcessor" in on_034["error"]
