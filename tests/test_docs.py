"""The documentation is checked against the code, so it cannot drift."""

from __future__ import annotations

import re
import subprocess

import pytest

from ocr_api.profiles import DEFAULT_CHECKPOINTS, PROFILES, checkpoint_layout
from ocr_api.settings import DOCS_TABLE_END, DOCS_TABLE_START, settings_table
from tests.conftest import REPO

DOCS = REPO / "docs"
SOURCES = [REPO / "app.py", REPO / "config.py", *sorted((REPO / "ocr_api").rglob("*.py"))]


def _error_codes_in_source() -> set[str]:
    pattern = re.compile(r"""\bcode\s*=\s*"([a-z][a-z0-9_]*)\"""")
    return {code for path in SOURCES for code in pattern.findall(path.read_text())}


def test_configuration_doc_embeds_the_settings_table():
    text = (DOCS / "CONFIGURATION.md").read_text()
    embedded = text.split(DOCS_TABLE_START, 1)[1].split(DOCS_TABLE_END, 1)[0]
    assert embedded == settings_table(), "regenerate the table with: .venv/bin/python config.py --update-docs"


def test_configuration_doc_shows_the_model_table_of_the_code():
    text = (DOCS / "CONFIGURATION.md").read_text()
    for profile in PROFILES.values():
        row = (
            f"| {profile.family} | `{profile.vllm_architecture}` | {profile.ngram_size} | {profile.window_size} | "
            f"{profile.context_length} |"
        )
        assert row in text
    assert "transformers `deepseek-community/DeepSeek-OCR-2`" in text
    assert "vLLM `deepseek-ai/DeepSeek-OCR-2`" in text
    assert DEFAULT_CHECKPOINTS == {
        "transformers": "deepseek-community/DeepSeek-OCR-2",
        "vllm": "deepseek-ai/DeepSeek-OCR-2",
    }


def test_every_variable_the_start_scripts_read_is_documented():
    scripts = [REPO / "start_server.sh", REPO / "start_production.sh", *sorted((REPO / "scripts").glob("*.sh"))]
    variables = {name for path in scripts for name in re.findall(r"\$\{([A-Z][A-Z0-9_]*):-", path.read_text())}
    documented = (DOCS / "CONFIGURATION.md").read_text()
    assert variables, "the pattern found no variables: the test would check nothing"
    assert sorted(name for name in variables if f"`{name}`" not in documented) == []


def test_every_error_code_is_documented():
    codes = _error_codes_in_source()
    documented = set(re.findall(r"`([a-z][a-z0-9_]*)`", (DOCS / "ERROR_MESSAGES.md").read_text()))
    assert {"engine_not_ready", "corrupt_image", "payload_too_large"} <= codes
    assert sorted(codes - documented) == []


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    command = readme.split("## Run the tests", 1)[1].split("```bash\n", 1)[1].split("\n", 1)[0]
    ci_lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and line[0] not in "#"]
    assert command == ci_lines[-1]


def test_readme_links_point_at_existing_docs():
    for target in re.findall(r"\]\((docs/[^)]+)\)", (REPO / "README.md").read_text()):
        path, _, anchor = target.partition("#")
        assert (REPO / path).exists(), target
        if anchor:  # GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens
            headings = re.findall(r"^#+ (.+)$", (REPO / path).read_text(), flags=re.MULTILINE)
            slugs = {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}
            assert anchor in slugs, target


def test_the_timings_and_formats_the_api_docs_state_are_the_codes():
    from prometheus_client import CONTENT_TYPE_LATEST

    from ocr_api.jobs import callbacks
    from ocr_api.jobs.queue import CALLBACK_RETRIES, CALLBACK_RETRY_BACKOFF, CALLBACK_RETRY_DELAY_S, EXPIRE_EVERY_S

    text = " ".join((DOCS / "API_DOCUMENTATION.md").read_text().split())
    version = CONTENT_TYPE_LATEST.split(";")[1].strip()  # version=1.0.0
    assert f"(`text/plain; {version}`)" in text
    delays = [CALLBACK_RETRY_DELAY_S * CALLBACK_RETRY_BACKOFF**attempt for attempt in range(CALLBACK_RETRIES)]
    assert f"{', '.join(map(str, delays[:-1]))} and {delays[-1]} s after each failed attempt ends" in text
    assert f"an attempt gives up after {callbacks.TIMEOUT_S:g} s" in text
    assert f"swept every {EXPIRE_EVERY_S:g} s" in text


TOP_FOLDERS = ("ocr_api/", "ocr_client/", "ocr_dev/", "bench/", "tests/", "deploy/", "scripts/", "docs/")
FILE_KINDS = r"py|sh|md|yaml|toml|template|txt|service|env"


@pytest.mark.parametrize("doc", [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"], ids=lambda doc: doc.name)
def test_every_path_the_docs_name_exists(doc):
    """A module moved or renamed is renamed in the docs too: every repository path they name in backticks exists."""
    text = doc.read_text()
    files = re.findall(rf"`((?:[\w.-]+/)+[\w.-]+\.(?:{FILE_KINDS}))`", text)
    folders = [name for name in re.findall(r"`((?:[\w.-]+/)+)`", text) if name.startswith(TOP_FOLDERS)]
    relative = [name for name in [*files, *folders] if not name.startswith("/")]
    assert [name for name in relative if not (REPO / name).exists()] == []


def test_the_readmes_no_weights_path_works_as_written(tmp_path):
    """README: `./scripts/tiny_model.sh /tmp/tiny-ocr` then `DEEPSEEK_MODEL_NAME=/tmp/tiny-ocr ./start_server.sh`
    (the server itself: tests/test_server.py, on the same tiny model). The script installs .venv when it is missing;
    here, from another folder and with a relative path, it writes a checkpoint in transformers layout."""
    readme = (REPO / "README.md").read_text()
    assert "./scripts/tiny_model.sh /tmp/tiny-ocr\nDEEPSEEK_MODEL_NAME=/tmp/tiny-ocr ./start_server.sh" in readme
    run = subprocess.run([str(REPO / "scripts" / "tiny_model.sh"), "tiny-ocr"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert checkpoint_layout(str(tmp_path / "tiny-ocr")) == "transformers"


def test_trying_production_without_a_gpu_is_documented_and_runs_without_an_environment():
    deployment = (REPO / "docs" / "DEPLOYMENT.md").read_text()
    section = deployment.split("### Trying production without a GPU", 1)[1].split("\n### ", 1)[0]
    assert "python3 -m ocr_dev.stand_in_engine --port 8100 &" in section
    assert "OCR_ENGINE_URL=http://127.0.0.1:8100 ./start_production.sh" in section
    # The stand-in needs nothing installed: the system's python3 runs it from a fresh clone.
    command = ["python3", "-E", "-s", "-m", "ocr_dev.stand_in_engine", "--help"]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    assert "--step-ms" in run.stdout
