"""Choosing and configuring engines without running a model: flags, profiles, settings, the in-process timeout."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from ocr_api.engines import EngineLoadError, EngineTimeout, build_engine, choose_engine
from ocr_api.engines.vllm_engine import VllmEngine
from ocr_api.engines.vllm_flags import GUARD_PROCESSORS, engine_flags, with_guard
from ocr_api.profiles import PROFILES, checkpoint_layout, layout_mismatch, profile_for_checkpoint
from ocr_api.settings import ConfigError, Settings
from ocr_dev.tiny_vllm_model import write_tiny_vllm_model
from tests.conftest import REPO


def test_engine_url_makes_auto_choose_the_remote_engine():
    assert choose_engine("auto", cuda_present=True, vllm_installed=True, engine_url="http://gpu:8000") == "remote"
    assert choose_engine("vllm", cuda_present=False, vllm_installed=False, engine_url="http://gpu:8000") == "vllm"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OCR_ENGINE": "remote"}, "OCR_ENGINE=remote needs OCR_ENGINE_URL"),
        ({"OCR_ENGINE_URL": "gpu-box:8000"}, "OCR_ENGINE_URL: every server must start with http:// or https://"),
        ({"OCR_ENGINE_URL": "http://a:8000,b:8000"}, "every server must start with http:// or https://; got 'b:8000'"),
        ({"OCR_ENGINE_URL": "http://a:8000/,http://a:8000"}, "OCR_ENGINE_URL names the same server twice"),
        ({"OCR_ENGINE": "remote", "OCR_ENGINE_URL": " , "}, "OCR_ENGINE_URL names no server"),
        ({"GPU_MEMORY_UTILIZATION": "1.5"}, "GPU_MEMORY_UTILIZATION must be between"),
        ({"DATA_PARALLEL_SIZE": "0"}, "DATA_PARALLEL_SIZE must be between"),
        ({"TENSOR_PARALLEL_SIZE": "two"}, "TENSOR_PARALLEL_SIZE must be an integer"),
        ({"ENGINE_TIMEOUT_S": "0"}, "ENGINE_TIMEOUT_S must be between"),
        ({"ENGINE_CONNECTIONS": "many"}, "ENGINE_CONNECTIONS must be an integer"),
    ],
)
def test_engine_settings_are_validated(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_secrets_stay_out_of_the_settings_repr():
    settings = Settings(secret_key="s3cret-key", engine_api_key="engine-token")
    assert "s3cret-key" not in repr(settings)
    assert "engine-token" not in repr(settings)


def test_engine_flags_put_the_recipe_first_and_extra_args_last():
    extra = "--max-model-len 2048 --foo 'a b'"
    settings = Settings(model_name="/models/ocr", max_model_len=4096, max_tokens=4096, vllm_extra_args=extra)
    assert "--logits-processors" not in engine_flags(settings)  # the runner decides it: with_guard
    for runner, processor in GUARD_PROCESSORS.items():
        flags = with_guard(engine_flags(settings), runner)
        assert flags[:4] == ["--model", "/models/ocr", "--logits-processors", processor]
    assert "--no-enable-prefix-caching" in flags
    assert flags[flags.index("--mm-processor-cache-gb") + 1] == "0"
    assert flags[flags.index("--max-model-len") + 1] == "4096"
    # argparse keeps the last value, so VLLM_EXTRA_ARGS, split as a shell would, overrides MAX_MODEL_LEN.
    assert flags[-4:] == ["--max-model-len", "2048", "--foo", "a b"]
    assert engine_flags(Settings())[1] == "deepseek-ai/DeepSeek-OCR-2"


def test_the_gpu_settings_become_vllm_flags_when_they_differ_from_vllms_defaults():
    defaults = engine_flags(Settings())
    for flag in ("--gpu-memory-utilization", "--tensor-parallel-size", "--data-parallel-size"):
        assert flag not in defaults  # vLLM's own default then, on a GPU and on its CPU build alike
    settings = Settings(gpu_memory_utilization=0.55, tensor_parallel_size=2, data_parallel_size=4,
                        vllm_extra_args="--data-parallel-size 8")  # fmt: skip
    flags = engine_flags(settings)
    assert flags[flags.index("--gpu-memory-utilization") + 1] == "0.55"
    assert flags[flags.index("--tensor-parallel-size") + 1] == "2"
    assert flags[flags.index("--data-parallel-size") + 1] == "4"
    assert flags[-2:] == ["--data-parallel-size", "8"]  # VLLM_EXTRA_ARGS comes last, and argparse keeps the last


def test_the_gpu_settings_reach_the_shell_from_their_variables():
    env = {"GPU_MEMORY_UTILIZATION": "0.8", "MAX_MODEL_LEN": "4096", "MAX_TOKENS": "2048",
           "TENSOR_PARALLEL_SIZE": "1", "DATA_PARALLEL_SIZE": "2"}  # fmt: skip
    run = _print_flags("", **env)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[lines.index("--max-model-len") + 1] == "4096"
    assert lines[lines.index("--gpu-memory-utilization") + 1] == "0.8"
    assert lines[lines.index("--data-parallel-size") + 1] == "2"
    assert "--tensor-parallel-size" not in lines


def _print_flags(extra_args: str, *options: str, **more: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "DEEPSEEK_MODEL_NAME": "/m", "VLLM_EXTRA_ARGS": extra_args, **more}
    command = [sys.executable, "-m", "ocr_api.engines.vllm_flags", *(options or ("--runner", "v2"))]
    return subprocess.run(command, check=False, cwd=REPO, env=env, capture_output=True, text=True)


def test_the_flags_name_the_guard_of_the_runner_asked_and_without_vllm_say_what_to_install():
    for runner, processor in GUARD_PROCESSORS.items():
        lines = _print_flags("", "--runner", runner).stdout.splitlines()
        assert lines[lines.index("--logits-processors") + 1] == processor
    # Asked to decide (the default), a Python without vLLM cannot: one line, status 1, nothing for the shell.
    run = _print_flags("", "--runner", "auto")
    assert (run.returncode, run.stdout) == (1, "")
    assert run.stderr.startswith("error: the vLLM engine needs vLLM, which is not importable in this Python")
    # --check: the settings and the checkpoint only, silently.
    run = _print_flags("", "--check")
    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")
    run = _print_flags("--served-model-name 'unclosed", "--check")
    assert run.returncode == 1


def test_flags_for_the_shell_and_a_broken_extra_args_line():
    run = _print_flags("--tensor-parallel-size 2")
    assert run.returncode == 0
    assert run.stdout.splitlines()[-2:] == ["--tensor-parallel-size", "2"]
    run = _print_flags("--served-model-name 'unclosed")
    assert run.returncode == 1
    assert run.stderr.startswith("error: VLLM_EXTRA_ARGS cannot be split into flags")


def test_in_process_engine_without_vllm_fails_with_one_clear_message():
    engine = build_engine(Settings(engine="vllm", model_name="/models/ocr"))
    assert isinstance(engine, VllmEngine)
    assert engine.model_id == "/models/ocr"
    with pytest.raises(EngineLoadError, match="the vLLM engine needs vLLM"):
        engine.load()


def test_in_process_pages_time_out_and_cancel_inside_vllm(monkeypatch):
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    cancelled = threading.Event()

    async def slow_generation(request):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()  # what makes vLLM abort the request
            raise

    engine = VllmEngine(["--model", "/m"], timeout_s=0.2)
    engine._loop = loop
    engine._engine = SimpleNamespace(errored=False)  # a running AsyncLLM, as far as submit() can tell
    monkeypatch.setattr(engine, "_generate_one", slow_generation)
    try:
        with pytest.raises(EngineTimeout):  # ENGINE_TIMEOUT_S is per page
            engine.submit(None).result(timeout=5)
        assert cancelled.wait(5)
        cancelled.clear()
        engine._timeout_s = 60
        page = engine.submit(None)
        time.sleep(0.1)
        assert page.cancel()  # the stream gives up on a page (its client hung up): vLLM aborts it
        assert cancelled.wait(5)
    finally:
        engine._engine = None
        engine._stop_loop()
        thread.join(5)
        loop.close()


@pytest.mark.parametrize(("version", "family"), [("v1", "deepseek-ocr"), ("v2", "deepseek-ocr-2")])
def test_profile_of_a_local_checkpoint_comes_from_its_architecture(tmp_path, version, family):
    write_tiny_vllm_model(tmp_path / "ocr", version)
    assert profile_for_checkpoint(str(tmp_path / "ocr")).family == family


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("deepseek-ai/DeepSeek-OCR", "deepseek-ocr"),
        ("unsloth/DeepSeek-OCR", "deepseek-ocr"),
        ("deepseek-ai/DeepSeek-OCR-2", "deepseek-ocr-2"),
        ("/models/deepseek-ocr2/", "deepseek-ocr-2"),
    ],
)
def test_profile_of_a_named_checkpoint_comes_from_its_name(name, family):
    assert profile_for_checkpoint(name) is PROFILES[family]


def _checkpoint(tmp_path, name: str, **config) -> str:
    """A checkpoint directory holding only its config.json: enough to tell its layout."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def test_the_checkpoint_layout_is_read_from_config_json_or_the_hub_owner(tmp_path):
    converted = _checkpoint(tmp_path, "converted", architectures=["DeepseekOcr2ForConditionalGeneration"])
    original = _checkpoint(tmp_path, "original", architectures=["DeepseekOCR2ForCausalLM"])
    by_type = _checkpoint(tmp_path, "by-type", model_type="deepseek_ocr2")
    unknown = _checkpoint(tmp_path, "unknown", architectures=["LlamaForCausalLM"])
    assert [checkpoint_layout(path) for path in (converted, original, by_type, unknown)] == [
        "transformers",
        "original",
        "transformers",
        None,
    ]
    assert checkpoint_layout("deepseek-community/DeepSeek-OCR-2") == "transformers"
    assert checkpoint_layout("deepseek-ai/DeepSeek-OCR") == "original"
    assert checkpoint_layout("unsloth/DeepSeek-OCR-2") == "original"
    assert checkpoint_layout("someone/some-model") is None


def test_auto_follows_the_checkpoint_layout_even_on_a_gpu_machine(tmp_path):
    converted = _checkpoint(tmp_path, "converted", architectures=["DeepseekOcr2ForConditionalGeneration"])
    original = _checkpoint(tmp_path, "original", architectures=["DeepseekOCRForCausalLM"])
    assert choose_engine("auto", cuda_present=True, vllm_installed=True, model_name=converted) == "transformers"
    assert choose_engine("auto", cuda_present=True, vllm_installed=True, model_name=original) == "vllm"
    assert choose_engine("auto", cuda_present=True, vllm_installed=True) == "vllm"
    # No CUDA: transformers, which then refuses an original-layout checkpoint by name (below).
    assert choose_engine("auto", cuda_present=False, vllm_installed=True, model_name=original) == "transformers"
    assert choose_engine("auto", cuda_present=True, vllm_installed=False) == "transformers"


def test_the_start_scripts_ask_the_same_question_without_a_virtual_environment(tmp_path):
    converted = _checkpoint(tmp_path, "converted", architectures=["DeepseekOcr2ForConditionalGeneration"])
    env = {"PATH": "/nonexistent", "DEEPSEEK_MODEL_NAME": converted}
    run = subprocess.run(
        ["/usr/bin/python3", "-m", "ocr_api.profiles", "engine"],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert (run.returncode, run.stdout.strip()) == (0, "transformers")


def test_each_engine_refuses_the_other_layout_naming_the_checkpoint_it_needs(tmp_path):
    converted = _checkpoint(tmp_path, "converted", architectures=["DeepseekOcr2ForConditionalGeneration"])
    original = _checkpoint(tmp_path, "original", architectures=["DeepseekOCR2ForCausalLM"])
    assert layout_mismatch("transformers", converted) is None
    assert layout_mismatch("vllm", original) is None
    assert "deepseek-community/DeepSeek-OCR-2" in layout_mismatch("transformers", original)
    assert "deepseek-ai/DeepSeek-OCR-2" in layout_mismatch("vllm", converted)
    with pytest.raises(EngineLoadError, match="transformers layout \\(deepseek-community/DeepSeek-OCR-2\\)"):
        build_engine(Settings(engine="transformers", model_name=original)).load()
    with pytest.raises(EngineLoadError, match="which vLLM cannot load"):
        build_engine(Settings(engine="vllm", model_name=converted)).load()


def test_the_vllm_flags_refuse_a_transformers_layout_checkpoint(tmp_path):
    converted = _checkpoint(tmp_path, "converted", architectures=["DeepseekOcr2ForConditionalGeneration"])
    env = {"PATH": "/usr/bin:/bin", "DEEPSEEK_MODEL_NAME": converted}
    run = subprocess.run(
        [sys.executable, "-m", "ocr_api.engines.vllm_flags"],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr.startswith(f"error: {converted} is DeepSeek-OCR-2 in transformers layout")


@pytest.mark.parametrize(
    ("script", "env"),
    [
        ("start_server.sh", {"OCR_ENGINE": "vllm"}),
        ("start_production.sh", {}),
        ("scripts/start_engine.sh", {}),
    ],
)
def test_a_checkpoint_vllm_cannot_load_is_refused_before_anything_is_installed(tmp_path, script, env):
    """A checkout without virtual environments; its Python creates none (it records the attempt and fails)."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for part in ("start_server.sh", "start_production.sh", "app.py", "scripts", "ocr_api", "requirements.txt"):
        source = REPO / part
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, checkout / part)
    attempts = tmp_path / "venv-attempts"
    python = tmp_path / "python3"
    python.write_text(
        f'#!/bin/sh\nif [ "$2" = venv ]; then echo "$@" >> {attempts}; exit 1; fi\nexec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    converted = _checkpoint(tmp_path, "converted", architectures=["DeepseekOcr2ForConditionalGeneration"])
    run = subprocess.run([str(checkout / script)], env={"PATH": os.environ["PATH"], "PYTHON": str(python),
                         "DEEPSEEK_MODEL_NAME": converted, **env}, capture_output=True, text=True, timeout=120,
                         check=False)  # fmt: skip
    assert run.returncode == 1, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {layout_mismatch('vllm', converted)}"]
    assert "installing" not in run.stderr
    assert not attempts.exists()
