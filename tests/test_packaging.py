"""The deployment files under deploy/, checked as far as this machine allows: parsed, their commands and variables
held against the repository's scripts and settings, the systemd units by systemd-analyze. Not checked here: building
the images and running the compose file (no Docker daemon, no `docker compose`, no hadolint on these machines)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from ocr_api.engines.vllm_flags import GUARD_PROCESSORS
from ocr_api.settings import documented_settings
from ocr_dev.servers import what_start_engine_sh_runs
from ocr_dev.tiny_vllm_model import write_tiny_vllm_model
from tests.conftest import REPO, vllm_python_or_skip

DEPLOY = REPO / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
INSTALLED_AT = "/opt/deepseek-ocr-api"  # where the units expect the checkout
# Variables read by neither the service nor the start scripts, but by what they run.
OTHERS_READ = {"HF_HOME"}
# The longest a drained stop may take: DRAIN_SECONDS + GUNICORN_GRACEFUL_TIMEOUT + the engine's 30 s (defaults).
LONGEST_STOP_S = 5 + 30 + 30


def known_variables() -> set[str]:
    """The settings (config.py) and the start scripts' own variables (their table in docs/CONFIGURATION.md)."""
    table = (REPO / "docs" / "CONFIGURATION.md").read_text().split("## Start-script settings", 1)[1]
    script_variables = set(re.findall(r"^\| `([A-Z_]+)` \|", table, flags=re.MULTILINE))
    return {env for env, _, _ in documented_settings()} | script_variables | OTHERS_READ


def dockerfile(name: str) -> list[tuple[str, str]]:
    """(instruction, arguments) of each line of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / name).read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]  # type: ignore[misc]


def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit's sections, each key with every value it is given (systemd allows repeats)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        elif line:
            key, value = line.split("=", 1)
            current.setdefault(key, []).append(value)
    return sections


def in_repo(path: str) -> Path:
    """A path the deployment names, in this checkout."""
    return REPO / path.removeprefix(INSTALLED_AT).lstrip("/").removeprefix("./")


def _executable(path: Path) -> bool:
    return path.is_file() and bool(path.stat().st_mode & stat.S_IXUSR)


@pytest.mark.parametrize("name", ["Dockerfile.api", "Dockerfile.engine"])
def test_each_image_runs_a_script_of_ours_as_an_unprivileged_user_with_a_health_check(name):
    instructions = dockerfile(name)
    known = {"FROM", "RUN", "COPY", "WORKDIR", "USER", "ENV", "EXPOSE", "HEALTHCHECK", "CMD", "ENTRYPOINT"}
    assert {instruction for instruction, _ in instructions} <= known
    kinds = [instruction for instruction, _ in instructions]
    users = [arguments for instruction, arguments in instructions if instruction == "USER"]
    assert users
    assert users[-1] not in ("root", "0")
    start = max(index for index, kind in enumerate(kinds) if kind in ("CMD", "ENTRYPOINT"))
    assert kinds.index("USER") < start
    command = next(
        arguments for instruction, arguments in reversed(instructions) if instruction in ("CMD", "ENTRYPOINT")
    )
    script = yaml.safe_load(command)[0]  # the exec form is a JSON (so YAML) list
    assert _executable(in_repo(script)), script
    assert "HEALTHCHECK" in kinds
    for instruction, arguments in instructions:
        if instruction == "COPY":
            sources = [part for part in arguments.split() if not part.startswith("--")][:-1]
            assert all((REPO / source).exists() for source in sources), arguments


def test_the_engine_image_is_vllms_of_the_pinned_version():
    pinned = re.search(r"^vllm==(\S+)", (REPO / "requirements-vllm.txt").read_text(), flags=re.MULTILINE)
    assert pinned
    (base,) = [arguments for instruction, arguments in dockerfile("Dockerfile.engine") if instruction == "FROM"]
    assert base == f"vllm/vllm-openai:v{pinned[1]}"


def test_the_api_image_has_the_front_server():
    runs = " ".join(arguments for instruction, arguments in dockerfile("Dockerfile.api") if instruction == "RUN")
    assert "apt-get install" in runs
    assert " nginx" in runs
    envs = " ".join(arguments for instruction, arguments in dockerfile("Dockerfile.api") if instruction == "ENV")
    assert "NGINX=/usr/sbin/nginx" in envs


@pytest.mark.slow
@pytest.mark.vllm
def test_what_the_engine_image_copies_is_enough_to_start_the_engine(tmp_path):
    # The files the image copies, alone in a directory: the flags print (asking the vLLM installed, here the CPU
    # build, which runner it runs), start_engine.sh runs the server with them (a stand-in interpreter records the
    # command instead of starting vLLM), and the guard's processor imports from the environment vLLM is given.
    vllm_python = vllm_python_or_skip()
    app = tmp_path / "app"
    for instruction, arguments in dockerfile("Dockerfile.engine"):
        if instruction == "COPY":
            *sources, target = [part for part in arguments.split() if not part.startswith("--")]
            destination = app / target.removeprefix("/app").strip("/")
            for source in sources:  # as COPY does: a directory's contents into the target, a file into it
                if (REPO / source).is_dir():
                    shutil.copytree(REPO / source, destination, dirs_exist_ok=True)
                else:
                    destination.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(REPO / source, destination)
    model = write_tiny_vllm_model(tmp_path / "model", "v1")  # the image's default checkpoint is on the hub
    env = {"PATH": os.environ["PATH"], "VLLM_HOST": "0.0.0.0", "VLLM_PORT": "8123", "DATA_PARALLEL_SIZE": "2",
           "OCR_ENGINE_API_KEY": "engine-key", "DEEPSEEK_MODEL_NAME": str(model), "MAX_MODEL_LEN": "4096",
           "MAX_TOKENS": "2048"}  # fmt: skip
    command, environment = what_start_engine_sh_runs(app / "scripts" / "start_engine.sh", env, tmp_path,
                                                     (str(vllm_python),))  # fmt: skip
    assert command[:4] == ["-m", "vllm.entrypoints.openai.api_server", "--host", "0.0.0.0"]
    assert command[command.index("--port") + 1] == "8123"
    assert command[command.index("--model") + 1] == str(model)
    assert command[command.index("--data-parallel-size") + 1] == "2"
    assert command[-2:] == ["--api-key", "engine-key"]
    # The CPU build runs Model Runner V1 and so DeepSeek's class; a GPU's vLLM gets ocr_guard's (test_vllm_guard.py),
    # which must import from the image's files wherever vLLM runs.
    assert command[command.index("--logits-processors") + 1] == GUARD_PROCESSORS["v1"]
    assert "VLLM_USE_V2_MODEL_RUNNER" not in environment
    # The service's own variables that vLLM would take for its own (VLLM_PORT is vLLM's internal base port).
    assert not {"VLLM_HOST", "VLLM_PORT", "VLLM_EXTRA_ARGS"} & set(environment)
    module, name = GUARD_PROCESSORS["v2"].split(":")
    run = subprocess.run([str(vllm_python), "-c", f"import {module}; print({module}.{name}.__name__)"], cwd="/",
                         env=environment, capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert run.stdout.strip() == name, run.stderr[-2000:]
    assert Path(environment["PYTHONPATH"].split(os.pathsep)[0]) == app


def test_every_vllm_the_scripts_start_is_start_engine_shs():
    # One command line and one environment for vLLM: start_production.sh runs the engine through start_engine.sh.
    production = (REPO / "start_production.sh").read_text()
    assert "vllm.entrypoints" not in production
    assert "scripts/start_engine.sh" in production
    for script in [*(REPO / "scripts").glob("*.sh"), REPO / "start_server.sh"]:
        if script.name != "start_engine.sh":
            assert "vllm.entrypoints" not in script.read_text(), script


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_runs_each_process_as_a_service_of_its_own_with_a_health_check():
    services = _compose()["services"]
    assert set(services) == {"engine", "front", "api", "consumer", "redis"}
    for name, service in services.items():
        assert service["healthcheck"]["test"], name
        assert service.get("restart") == "unless-stopped", name  # compose restarts it, no script of ours
        assert service.get("user") in (None, "ocr", "redis"), name  # the images' own unprivileged users
        if "build" in service:
            assert (REPO / service["build"]["dockerfile"]).exists()
    commands = {name: services[name]["command"] for name in ("front", "api", "consumer")}
    assert commands == {
        "front": ["./scripts/start_front.sh"],
        "api": ["./scripts/start_api.sh"],
        "consumer": ["./scripts/start_consumer.sh"],
    }
    for name, command in commands.items():
        assert _executable(in_repo(command[0])), name
        assert "exec " in in_repo(command[0]).read_text(), name  # the script becomes the process compose watches
    for name in ("api", "consumer"):
        conditions = {dependency: wait["condition"] for dependency, wait in services[name]["depends_on"].items()}
        assert conditions == {"engine": "service_healthy", "redis": "service_healthy"}
    assert services["front"]["depends_on"] == {"api": {"condition": "service_healthy"}}
    assert services["front"]["stop_signal"] == "SIGQUIT"  # nginx's graceful stop
    assert services["front"]["ports"] == ["5000:5000"]
    assert "ports" not in services["api"]


def test_compose_front_reaches_the_api_on_a_socket_in_a_shared_volume():
    services = _compose()["services"]
    api, front = services["api"]["environment"], services["front"]["environment"]
    assert api["API_BIND"] == front["API_UPSTREAM"] == "unix:/run/deepseek-ocr/gunicorn.sock"
    assert "run:/run/deepseek-ocr" in services["api"]["volumes"]
    assert "run:/run/deepseek-ocr" in services["front"]["volumes"]
    assert "/run/deepseek-ocr/gunicorn.sock" in " ".join(services["api"]["healthcheck"]["test"])
    assert api["TRUSTED_PROXIES"] == "1"  # the front service's address is the client's proxy
    # The image makes the socket's directory for its user: a volume mounted there starts owned by it.
    assert any(kind == "RUN" and "/run/deepseek-ocr" in args for kind, args in dockerfile("Dockerfile.api"))


def test_compose_shares_redis_the_jobs_volume_and_the_engine_between_api_and_consumer():
    services = _compose()["services"]
    known = known_variables()
    for name, service in services.items():
        if name != "redis":
            assert set(service["environment"]) <= known, (name, set(service["environment"]) - known)
    for name in ("api", "consumer"):
        environment = services[name]["environment"]
        assert environment["REDIS_URL"].startswith("redis://redis:6379/")
        assert environment["OCR_ENGINE_URL"] == f"http://engine:{services['engine']['environment']['VLLM_PORT']}"
        assert f"jobs:{environment['JOBS_DIR']}" in services[name]["volumes"]
    assert services["engine"]["environment"]["VLLM_HOST"] == "0.0.0.0"  # reachable from the other containers
    for name in ("front", "api", "consumer"):
        grace = int(services[name]["stop_grace_period"].removesuffix("s"))
        assert grace >= LONGEST_STOP_S
    assert set(_compose()["volumes"]) >= {"jobs", "redis", "models"}


@pytest.mark.parametrize("path", UNITS, ids=lambda path: path.name)
def test_each_unit_runs_a_script_of_ours_unprivileged_and_stops_in_time(path):
    service = unit(path)["Service"]
    assert service["User"][0] not in ("root", "0")
    (start,) = service["ExecStart"]
    assert start.startswith(INSTALLED_AT)
    assert _executable(in_repo(start.split()[0])), start
    assert service["WorkingDirectory"] == [INSTALLED_AT]
    assert int(service["TimeoutStopSec"][0]) >= (LONGEST_STOP_S if "engine" not in path.name else 30)
    if "engine" not in path.name:
        assert service["KillMode"] == ["mixed"]  # the stop signal to the process the script became, not its children
    assert service["EnvironmentFile"] == ["/etc/deepseek-ocr/deepseek-ocr.env"]
    for assignment in service.get("Environment", []):
        assert {pair.split("=", 1)[0] for pair in assignment.split()} <= known_variables()


def test_the_units_run_each_process_with_its_own_stop():
    units = {path.name.removeprefix("deepseek-ocr-").removesuffix(".service"): unit(path) for path in UNITS}
    assert set(units) == {"engine", "front", "api", "consumer"}
    starts = {name: units[name]["Service"]["ExecStart"][0].rsplit("/", 1)[1] for name in units}
    assert starts == {
        "engine": "start_engine.sh",
        "front": "start_front.sh",
        "api": "start_api.sh",
        "consumer": "start_consumer.sh",
    }
    assert units["front"]["Service"]["KillSignal"] == ["SIGQUIT"]  # nginx's graceful stop
    # The API drains before systemd's SIGTERM: DRAIN_FILE in its environment, touched by ExecStop for DRAIN_SECONDS.
    api = units["api"]["Service"]
    environment = dict(pair.split("=", 1) for line in api["Environment"] for pair in line.split())
    assert environment["TRUSTED_PROXIES"] == "1"
    assert environment["DRAIN_FILE"].startswith("/run/deepseek-ocr-api/")
    (stop,) = api["ExecStop"]
    assert 'touch "$DRAIN_FILE"' in stop
    assert "DRAIN_SECONDS" in stop
    env_file = dict(
        line.split("=", 1)
        for line in (DEPLOY / "systemd" / "deepseek-ocr.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert env_file["API_BIND"] == env_file["API_UPSTREAM"]


def test_the_units_environment_file_names_only_known_variables():
    names = {
        line.split("=", 1)[0]
        for line in (DEPLOY / "systemd" / "deepseek-ocr.env").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert names <= known_variables(), names - known_variables()
    assert {"OCR_ENGINE_URL", "REDIS_URL", "JOBS_DIR", "DATA_PARALLEL_SIZE", "GPU_MEMORY_UTILIZATION"} <= names


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_units(tmp_path):
    # Installed where this checkout is, so that systemd finds the commands they run; every key must be known.
    env_file = DEPLOY / "systemd" / "deepseek-ocr.env"
    for path in UNITS:
        text = (
            path.read_text()
            .replace(INSTALLED_AT, str(REPO))
            .replace("/etc/deepseek-ocr/deepseek-ocr.env", str(env_file))
        )
        (tmp_path / path.name).write_text(text)
    run = subprocess.run(["systemd-analyze", "verify", "--man=no", *sorted(map(str, tmp_path.glob("*.service")))],
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    problems = [line for line in (run.stdout + run.stderr).splitlines() if "Special user" not in line]
    assert run.returncode == 0, problems
    assert not [line for line in problems if "Unknown" in line or "ignoring" in line], problems
