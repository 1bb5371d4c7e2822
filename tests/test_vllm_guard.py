"""The repetition guard under the real vLLM: the model runner vLLM would pick on a GPU, and the start-up check.

vLLM's CPU build has no Triton and always runs its V1 model runner; on a CUDA machine vLLM 0.32 and 0.33 pick Model
Runner V2, whose loader refuses DeepSeek's NGramPerReqLogitsProcessor (a V1-interface processor), and 0.34 has no
other runner, no DeepSeek class and refuses VLLM_USE_V2_MODEL_RUNNER=0. ocr_dev/runner_decision.py runs vLLM's own
configuration and loader code as on a CUDA machine (Triton reported present) for exactly the flags and environment
scripts/start_engine.sh and the in-process engine give vLLM, each asking the installed vLLM which runner it will run.
vLLM 0.34.0 is its wheel's Python modules (.vllm-releases/) on .venv-vllm's torch: its runner needs no decision, and its
checks of the environment run here. The start-up check is then run against a real vLLM server started without the
guard (the guarded one is tests/test_vllm.py's) and an in-process engine without it. Random weights, CPU build.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from PIL import Image

from ocr_api.admission import INTERACTIVE, JOB, EnginePriorities, Sender
from ocr_api.engines.base import EngineRequest
from ocr_api.engines.remote.client import chat_body
from ocr_api.engines.vllm_flags import GUARD_PROCESSORS, engine_flags, with_guard
from ocr_api.guard import GuardSettings
from ocr_api.settings import Settings
from ocr_dev.inputs import png_bytes
from ocr_dev.servers import free_port, metric_samples, serve_service, wait_until, what_start_engine_sh_runs
from ocr_dev.tiny_vllm_model import CPU_TRIAL_ENV, CPU_TRIAL_FLAGS, write_tiny_vllm_model
from tests.conftest import REPO, vllm_python_or_skip, vllm_release_or_skip

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

VLLM_PYTHON = vllm_python_or_skip()
START_TIMEOUT_S = 600
# The project's settings for the tiny checkpoint: its positions stop at 4096.
TINY = {"MAX_MODEL_LEN": "4096", "MAX_TOKENS": "2048"}
# The same vLLM on a machine with Triton (a CUDA machine): scripts/start_engine.sh's Python there.
ON_A_GPU = (str(VLLM_PYTHON), "-m", "ocr_dev.runner_decision", "as-gpu")
GUARDED = {"guard_loaded": True, "probe_refused": True, "page_accepted": True, "error": None}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_vllm_model(tmp_path_factory.mktemp("tiny-deepseek-ocr"), "v1")


def _tiny_settings(tiny_model: Path, **more: str) -> Settings:
    return Settings(model_name=str(tiny_model), max_model_len=4096, max_tokens=2048, **more)


def _with_release(env: dict[str, str], release: Path | None) -> dict[str, str]:
    """``env`` with another vLLM release's modules first on PYTHONPATH (None: .venv-vllm's own)."""
    if release is None:
        return env
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(release), env.get("PYTHONPATH", "")]))}


def _decide(flags: list[str], env: dict[str, str], in_process: bool = False) -> dict:
    """What vLLM's own code decides for ``flags`` in ``env`` on a machine with Triton (ocr_dev/runner_decision.py)."""
    command = [str(VLLM_PYTHON), "-m", "ocr_dev.runner_decision", "decide", *(["--in-process"] if in_process else []),
               *flags]  # fmt: skip
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def _what_start_engine_sh_runs(tmp_path: Path, tiny_model: Path, python: tuple[str, ...],
                               release: Path | None = None) -> tuple[list[str], dict[str, str]]:  # fmt: skip
    """The engine flags and the whole environment scripts/start_engine.sh hands vLLM (start_production.sh, the engine
    image and the systemd unit all run it), its flags printed by ``python``: an interpreter that records them stands
    in for vLLM's server."""
    env = _with_release({"PATH": os.environ["PATH"], "DEEPSEEK_MODEL_NAME": str(tiny_model), **TINY}, release)
    args, environment = what_start_engine_sh_runs(REPO / "scripts" / "start_engine.sh", env, tmp_path, python)
    assert args[:2] == ["-m", "vllm.entrypoints.openai.api_server"]
    flags = args[args.index("--port") + 2 :]  # the server's own --host and --port are not engine flags
    return flags, environment


def _processor(flags: list[str]) -> str:
    return flags[flags.index("--logits-processors") + 1]


def test_on_a_gpu_vllm_started_by_the_scripts_runs_the_v2_guard(tmp_path: Path, tiny_model: Path):
    flags, env = _what_start_engine_sh_runs(tmp_path, tiny_model, ON_A_GPU)
    assert _processor(flags) == GUARD_PROCESSORS["v2"]
    assert "VLLM_USE_V2_MODEL_RUNNER" not in env
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO)  # where vLLM's processes import ocr_guard from
    assert _decide(flags, env) == {"runner": "v2", **GUARDED}


def test_on_this_cpu_build_the_scripts_give_deepseeks_v1_class(tmp_path: Path, tiny_model: Path):
    """The CPU build has Model Runner V1 alone, which runs DeepSeek's own class (test_vllm.py serves pages with it)."""
    flags, env = _what_start_engine_sh_runs(tmp_path, tiny_model, (str(VLLM_PYTHON),))
    assert _processor(flags) == GUARD_PROCESSORS["v1"]
    assert "VLLM_USE_V2_MODEL_RUNNER" not in env


def test_on_a_gpu_the_in_process_engine_runs_the_v2_guard(tiny_model: Path):
    flags = engine_flags(_tiny_settings(tiny_model))
    env = {"PATH": os.environ["PATH"]}  # nothing set beforehand: the engine sets what it needs itself
    assert _decide(flags, env, in_process=True) == {"runner": "v2", **GUARDED}


def test_a_gpu_refuses_deepseeks_class_under_the_runner_it_picks(tiny_model: Path):
    """What the decision guards against: the V1 class on a CUDA machine's default runner (the recipe's old flags
    without a runner pin) stops vLLM at start."""
    flags = with_guard(engine_flags(_tiny_settings(tiny_model)), "v1")
    decision = _decide(flags, {"PATH": os.environ["PATH"]})
    assert decision["runner"] == "v2"
    assert "NGramPerReqLogitsProcessor is not a subclass" in decision["error"]


@pytest.fixture(scope="module")
def newest_release() -> Path:
    return vllm_release_or_skip("0.34.0")


def test_with_the_newest_vllm_the_scripts_pass_no_pin_it_refuses_and_name_the_v2_guard(
    tmp_path: Path, tiny_model: Path, newest_release: Path
):
    flags, env = _what_start_engine_sh_runs(tmp_path, tiny_model, ON_A_GPU, newest_release)
    assert _processor(flags) == GUARD_PROCESSORS["v2"]
    # vLLM 0.34's own check of the environment (create_engine_config runs it so) passes on what the script hands vLLM,
    # and refuses the V1 pin the project used to set.
    check = "from vllm.platforms.interface import Platform; Platform.validate_environ(hard_fail=False); print('ok')"
    for pin, expected in ((None, "ok"), ("0", "Model Runner V1 has been removed")):
        environment = {**env, "VLLM_USE_V2_MODEL_RUNNER": pin} if pin else env
        run = subprocess.run([str(VLLM_PYTHON), "-c", check], cwd=tmp_path, env=environment, capture_output=True,
                             text=True, timeout=300, check=False)  # fmt: skip
        assert expected in run.stdout + run.stderr, run.stderr[-2000:]
    # From the environment vLLM is given (not this checkout's folder), 0.34's V2 loader loads the processor named.
    load = ("from vllm.v1.worker.gpu.sample.logits_processor.loader import build_custom_logits_processors_params_"
            "validator as build; import sys; build([sys.argv[1]]); print('loaded')")  # fmt: skip
    run = subprocess.run([str(VLLM_PYTHON), "-c", load, _processor(flags)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert run.stdout.strip().endswith("loaded"), run.stderr[-2000:]


@pytest.fixture(scope="module")
def unguarded_server(tmp_path_factory, tiny_model: Path) -> Iterator[str]:
    """A real vLLM server with the service's flags but without --logits-processors, and with vLLM's default
    scheduling (fcfs): a server started by hand from an old recipe, or on a runner that cannot load the processor."""
    extra = f"{CPU_TRIAL_FLAGS} --scheduling-policy fcfs"  # later than the service's own: it wins
    flags = engine_flags(_tiny_settings(tiny_model, vllm_extra_args=extra))  # no guard's processor
    port = free_port()
    log = tmp_path_factory.mktemp("unguarded") / "vllm.log"
    env = {**os.environ, **CPU_TRIAL_ENV}
    command = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1", "--port",
               str(port), *flags]  # fmt: skip
    with log.open("w") as output:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                return requests.get(f"{url}/health", timeout=2).ok
            except requests.ConnectionError:
                return False

        wait_until(healthy, timeout_s=START_TIMEOUT_S, interval_s=2)
        yield url
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=60)


def test_a_real_vllm_without_the_guard_is_refused_and_says_why(tmp_path: Path, unguarded_server: str):
    with serve_service(tmp_path, unguarded_server) as url:
        ready = requests.get(f"{url}/ready", timeout=10)
        assert (ready.status_code, ready.json()["code"]) == (503, "engine_unguarded")
        check = requests.get(f"{url}/health", timeout=10).json()["guard"]["checks"][unguarded_server]
        assert check["state"] == "missing"
        assert "answered (200)" in check["check"]
        samples = metric_samples(requests.get(f"{url}/metrics", timeout=10).text)
        assert samples[("ocr_engine_guard_verified", (("server", unguarded_server),))] == 0.0
        refused = requests.post(f"{url}/ocr", files={"file": ("p.png", png_bytes((64, 48)))}, timeout=60)
        assert (refused.status_code, refused.json()["code"]) == (503, "engine_unguarded")
    # Accepted on purpose, it is used, and still reported unguarded.
    with serve_service(tmp_path, unguarded_server, allow_unguarded_engine=True) as url:
        assert requests.get(f"{url}/ready", timeout=10).status_code == 200
        guard = requests.get(f"{url}/health", timeout=10).json()["guard"]
        assert (guard["required"], guard["checks"][unguarded_server]["state"]) == (False, "missing")


def test_a_real_vllm_left_at_fcfs_takes_the_priorities_the_service_sends(unguarded_server: str):
    """A user's own vLLM without --scheduling-policy priority: the service's priorities (milliseconds of the clock,
    later for a job's page) are accepted and ignored (vLLM 0.32's FCFS queue does not read them), not refused."""
    priorities = EnginePriorities(job_delay_s=30)
    for sender in (Sender(INTERACTIVE, "key:a", "r"), Sender(JOB, "key:b", "job")):
        body = {"model": requests.get(f"{unguarded_server}/v1/models", timeout=10).json()["data"][0]["id"],
                "prompt": "hello", "max_tokens": 2, "priority": priorities.sent(sender)}  # fmt: skip
        answer = requests.post(f"{unguarded_server}/v1/completions", json=body, timeout=300)
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] >= 1


def test_vllms_own_chat_request_takes_the_services_body_with_its_priority(newest_release: Path):
    """The body the remote engine sends, read by vLLM's own request model: 0.32's (.venv-vllm) and 0.34's."""
    image = Image.new("RGB", (8, 8), "white")
    priority = EnginePriorities(job_delay_s=30).sent(Sender(JOB, "key:b", "job"))
    request = EngineRequest(image, "<image>\nFree OCR.", 64, GuardSettings(20, 90), priority=priority)
    body = chat_body("deepseek-ai/DeepSeek-OCR-2", request, "data:image/png;base64,AAAA")
    read = ("import json, sys; from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest; "
            "request = ChatCompletionRequest.model_validate(json.loads(sys.argv[1])); "
            "print(json.dumps([request.priority, request.vllm_xargs]))")  # fmt: skip
    for release in (None, newest_release):
        env = _with_release({"PATH": os.environ["PATH"]}, release)
        run = subprocess.run([str(VLLM_PYTHON), "-c", read, json.dumps(body)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
        assert json.loads(run.stdout.strip().splitlines()[-1]) == [
            priority,
            {"ngram_size": 20, "window_size": 90, "whitelist_token_ids": []},
        ], release


def test_the_in_process_engine_without_the_guard_refuses_to_start(tmp_path: Path, tiny_model: Path):
    flags = engine_flags(_tiny_settings(tiny_model, vllm_extra_args=CPU_TRIAL_FLAGS))
    script = tmp_path / "start.py"
    script.write_text(
        "import sys\n"
        "from ocr_api.engines import GuardMissing\n"
        "from ocr_api.engines.vllm_engine import VllmEngine\n"
        "if __name__ == '__main__':\n"  # vLLM spawns its engine process, which imports this file again
        f"    engine = VllmEngine({flags!r}, guard_processor=False)\n"
        "    try:\n"
        "        engine.load()\n"
        "    except GuardMissing as exc:\n"
        "        print('REFUSED', exc)\n"
        "        sys.exit(0)\n"
        "    print('STARTED', engine.guard_checks())\n"
        "    engine.close()\n"
    )
    env = {**os.environ, **CPU_TRIAL_ENV, "PYTHONPATH": str(REPO)}
    run = subprocess.run([str(VLLM_PYTHON), str(script)], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=START_TIMEOUT_S, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    refusal = [line for line in run.stdout.splitlines() if line.startswith(("REFUSED", "STARTED"))]
    assert refusal, run.stdout[-2000:]
    assert refusal[0].startswith("REFUSED"), refusal
    assert "no n-gram guard is loaded" in refusal[0]
    assert GUARD_PROCESSORS["v2"] in refusal[0]  # what to start vLLM with
