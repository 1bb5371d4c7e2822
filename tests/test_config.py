"""Settings: read once from the environment, typed, validated with messages that name the variable."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

import pytest

from ocr_api.engines import build_engine, choose_engine
from ocr_api.settings import ConfigError, Settings, settings_table
from tests.conftest import REPO


def test_defaults_match_the_original_service():
    settings = Settings.from_env({})
    assert settings.port == 5000
    assert settings.host == "0.0.0.0"
    assert settings.max_content_length == 16 * 1024 * 1024
    assert settings.default_prompt == "<image>\nFree OCR."
    assert settings.max_tokens == 8192
    assert settings.engine == "auto"
    assert settings.keep_uploads is False


def test_environment_values_are_typed(monkeypatch):
    monkeypatch.setenv("PORT", "8080")
    monkeypatch.setenv("KEEP_UPLOADS", "yes")
    monkeypatch.setenv("MAX_ASPECT_RATIO", "12.5")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("OCR_ENGINE", "transformers")
    monkeypatch.setenv("DEEPSEEK_MODEL_NAME", "/models/ocr2")
    settings = Settings.from_env(os.environ)
    assert (settings.port, settings.keep_uploads, settings.max_aspect_ratio) == (8080, True, 12.5)
    assert (settings.log_level, settings.engine, settings.model_name) == ("DEBUG", "transformers", "/models/ocr2")


def test_default_prompt_from_env_turns_backslash_n_into_newline():
    settings = Settings.from_env({"DEFAULT_PROMPT": r"<image>\n<|grounding|>OCR this image."})
    assert settings.default_prompt == "<image>\n<|grounding|>OCR this image."


def test_empty_variables_keep_defaults():
    assert Settings.from_env({"PORT": "", "MAX_TOKENS": "  "}).port == 5000


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "eighty"}, "PORT must be an integer"),
        ({"PORT": "70000"}, "PORT must be between"),
        ({"KEEP_UPLOADS": "maybe"}, "KEEP_UPLOADS must be true or false"),
        ({"OCR_ENGINE": "tensorrt"}, "OCR_ENGINE must be one of"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL must be one of"),
        ({"TORCH_DEVICE": "tpu"}, "TORCH_DEVICE must be one of"),
        ({"TORCH_DTYPE": "int8"}, "TORCH_DTYPE must be one of"),
        ({"MAX_TOKENS": "9000"}, "MAX_TOKENS must be between 1 and 8192"),
        ({"MAX_IMAGE_PIXELS": "500000000"}, "MAX_IMAGE_PIXELS must be between"),
        ({"MAX_ASPECT_RATIO": "wide"}, "MAX_ASPECT_RATIO must be a number"),
        ({"DEFAULT_PROMPT": "Free OCR."}, "DEFAULT_PROMPT must contain the <image> placeholder"),
    ],
)
def test_invalid_values_fail_at_start_naming_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


# What the rules across settings need, so that each setting's own bounds are what is tried.
ACROSS = {"MAX_TOKENS": "1", "OCR_ENGINE_URL": "http://127.0.0.1:8000"}


def _declared(rule: str) -> list[dataclasses.Field]:
    return [spec for spec in dataclasses.fields(Settings) if spec.metadata[rule] is not None]


@pytest.mark.parametrize("spec", _declared("within"), ids=lambda spec: spec.metadata["env"])
def test_every_setting_declared_within_bounds_is_held_to_them(spec):
    env, (low, high) = spec.metadata["env"], spec.metadata["within"]
    step = 1 if isinstance(spec.default, int) else 0.01
    for outside in (low - step, high + step):
        with pytest.raises(ConfigError, match=f"{env} must be between"):
            Settings.from_env({env: str(outside)})
    for inside in (low, high):
        assert getattr(Settings.from_env({**ACROSS, env: str(type(spec.default)(inside))}), spec.name) == inside


@pytest.mark.parametrize("spec", _declared("choices"), ids=lambda spec: spec.metadata["env"])
def test_every_setting_declared_with_choices_takes_only_them(spec):
    env = spec.metadata["env"]
    with pytest.raises(ConfigError, match=f"{env} must be one of"):
        Settings.from_env({env: "NOT-A-CHOICE"})
    for choice in spec.metadata["choices"]:
        assert getattr(Settings.from_env({**ACROSS, env: choice}), spec.name) == choice


def test_the_documented_table_shows_what_each_setting_allows():
    rows = {row.split(" | ")[0].strip("| `"): row.split(" | ")[2] for row in settings_table().splitlines()[2:]}
    assert rows["PORT"] == "1 to 65\u2009535"
    assert rows["PAGE_SIZE"] == "`full`, `fit`"


def test_secret_key_is_random_per_process_when_unset_and_kept_when_set():
    first, second = Settings.from_env({}), Settings.from_env({})
    assert len(first.secret_key) >= 32
    assert first.secret_key != second.secret_key
    assert Settings.from_env({"SECRET_KEY": "s3cret"}).secret_key == "s3cret"


@pytest.mark.parametrize(
    ("requested", "cuda", "vllm", "expected"),
    [
        ("auto", True, True, "vllm"),
        ("auto", True, False, "transformers"),
        ("auto", False, True, "transformers"),
        ("auto", False, False, "transformers"),
        ("transformers", True, True, "transformers"),
        ("remote", False, False, "remote"),
    ],
)
def test_auto_engine_picks_vllm_only_with_cuda_and_vllm(requested, cuda, vllm, expected):
    assert choose_engine(requested, cuda, vllm) == expected


def test_transformers_engine_is_built_with_the_settings():
    engine = build_engine(Settings(engine="transformers", model_name="/models/x", torch_device="cpu"))
    assert (engine.name, engine.model_id) == ("transformers", "/models/x")


def test_transformers_engine_default_checkpoint_is_the_native_one():
    engine = build_engine(Settings(engine="transformers"))
    assert engine.model_id == "deepseek-community/DeepSeek-OCR-2"


def test_image_url_allowed_networks_are_checked_one_by_one():
    with pytest.raises(
        ConfigError, match=re.escape("IMAGE_URL_ALLOWED_NETWORKS: 'nope' is not a network such as 10.0.0.0/8")
    ):
        Settings.from_env({"IMAGE_URL_ALLOWED_NETWORKS": "10.0.0.0/8,nope"})
    assert len(Settings.from_env({"IMAGE_URL_ALLOWED_NETWORKS": "10.0.0.0/8, 127.0.0.1/32"}).image_url_networks) == 2


def _config(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {"PATH": os.environ["PATH"], **env}
    return subprocess.run([sys.executable, "-m", "config", *args], cwd=REPO, env=environment, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip


def test_python_m_config_says_how_to_use_it_and_checks_what_it_is_given():
    helped = _config("--help")
    assert helped.returncode == 0
    assert helped.stdout.startswith("usage: python -m config")
    assert "| Variable |" not in helped.stdout  # help, not the table
    assert _config().stdout.startswith("| Variable |")  # the table stays the default
    wrong = _config("--bogus")
    assert (wrong.returncode, wrong.stdout) == (2, "")
    for host, status in (("notahost.invalid", 1), ("localhost", 0), ("::", 0), ("127.0.0.1", 0)):
        checked = _config("--check", HOST=host)
        assert checked.returncode == status, (host, checked.stderr)
    refused = _config("--check", HOST="notahost.invalid").stderr
    assert "HOST: 'notahost.invalid' is neither an IP address nor a name" in refused
