"""``deepseek-ocr``: OCR files, folders and globs through the service, with progress bars, and resume.

    deepseek-ocr scans/ --out results/ --task markdown
    deepseek-ocr 'inbox/**/*.pdf' --url http://gpu-box:5000 --api-key "$KEY"

Each input gets ``<out>/<its path>.md`` and ``.json`` (the service's answer unchanged), and with ``--pdf``
``<out>/<its path>.pdf``, the searchable PDF (the same pages, the text under them). Images go to /ocr, PDFs (and
images over the service's upload limit, and every input with ``--pdf``: one reading gives both the JSON and the PDF)
as jobs, whose pages count on the bar. A run records in
``<out>/.deepseek-ocr-state.json`` each input's SHA-256 and the options it was read with once its results are
written, and each job's id as soon as it is queued: a second run with the same options skips what is done and waits
on the jobs it left, so an interrupted run loses nothing and redoes nothing; a run with other options (``--task``,
``--pages``, ...) reads the inputs again, and ``--force`` reads everything again. Ctrl-C stops the run at once: it
says what it left (jobs go on on the service) and writes nothing more; the next run goes on from there. The exit
status is 1 when any input failed, 2 on bad arguments, 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import json
import os
import queue
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import requests
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from ocr_client.client import ApiError, Client

URL_VARIABLE = "DEEPSEEK_OCR_URL"
KEY_VARIABLE = "DEEPSEEK_OCR_API_KEY"
DEFAULT_URL = "http://localhost:5000"
STATE_FILE = ".deepseek-ocr-state.json"
SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".pdf"}
PAGE_STATUSES = ("ok", "truncated", "repetitive", "failed")
INTERRUPTED_STATUS = 130  # as shells report a command ended by SIGINT
JOIN_S = 0.1  # how often the main thread looks up from waiting, so that Ctrl-C is seen at once


class Interrupted(Exception):
    """The run was stopped (Ctrl-C): a worker leaves its input as it is, for the next run."""


def sleep_unless_stopped(stop: threading.Event, seconds: float) -> None:
    """The client's sleep (between polls of a job, before a retry) that ends at once when the run is stopped."""
    if stop.wait(seconds):
        raise Interrupted()


@dataclass(frozen=True)
class Input:
    """One file to read, and the name its results take under --out."""

    path: Path
    name: str  # relative to the folder it was found in, or its own name

    @property
    def is_document(self) -> bool:
        return self.path.suffix.lower() == ".pdf"


@dataclass
class Outcome:
    """What became of one input: its page counts, or the error that stopped it."""

    name: str
    pages: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PAGE_STATUSES, 0))
    error: str | None = None
    skipped: bool = False


class State:
    """The run's record under --out: finished inputs by SHA-256, and the jobs queued but not yet written."""

    def __init__(self, out: Path):
        self.path = out / STATE_FILE
        self.lock = threading.Lock()
        self.data: dict[str, dict[str, Any]] = {"done": {}, "jobs": {}}
        if self.path.exists():
            # The record is replaced atomically, so it is whole; one edited by hand and broken starts afresh.
            with contextlib.suppress(ValueError):
                self.data.update(json.loads(self.path.read_text()))

    def update(self, section: str, key: str, value: Any) -> None:
        with self.lock:
            if value is None:
                self.data[section].pop(key, None)
            else:
                self.data[section][key] = value
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text(json.dumps(self.data, indent=1))
            os.replace(temporary, self.path)  # atomic: a run killed here leaves the old record or the new


def find_inputs(arguments: list[str], skipped: list[Path] | None = None) -> list[Input]:
    """Files as given, folders searched recursively, globs expanded; only the formats the service reads (the other
    files that folders and globs hold are added to ``skipped``, so that the run can say so)."""
    found: dict[Path, Input] = {}
    passed_over: list[Path] = [] if skipped is None else skipped
    for argument in arguments:
        path = Path(argument)
        if path.is_file():  # a file named on the command line is sent whatever its suffix
            found.setdefault(path.resolve(), Input(path, path.name))
            continue
        if path.is_dir():
            candidates = [(child, child.relative_to(path).as_posix()) for child in sorted(path.rglob("*"))]
        else:
            candidates = [(Path(match), Path(match).name) for match in sorted(glob.glob(argument, recursive=True))]
            if not candidates:
                raise FileNotFoundError(f"no such file, folder or match: {argument}")
        for candidate, name in candidates:
            if _readable(candidate):
                found.setdefault(candidate.resolve(), Input(candidate, name))
            elif candidate.is_file():
                passed_over.append(candidate)
    return list(found.values())


def some(names: list[str], most: int = 10) -> str:
    """The first ``most`` names, and how many more."""
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _readable(path: Path) -> bool:
    """A file whose suffix names a format the service reads: what folders and globs contribute (a file named on
    the command line is sent whatever its suffix)."""
    return path.is_file() and path.suffix.lower() in SUFFIXES


def _digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def _pages(result: dict[str, Any]) -> dict[str, int]:
    counts = dict.fromkeys(PAGE_STATUSES, 0)
    for page in result.get("pages") or [result]:
        status = page.get("status", "failed")
        counts[status] = counts.get(status, 0) + 1
    return counts


class Run:
    """One invocation: the inputs, the client, the progress bars and the record."""

    def __init__(
        self, client: Client, out: Path, fields: dict[str, str], console: Console, max_upload_mb: int,
        *, stop: threading.Event | None = None, force: bool = False,
    ):  # fmt: skip
        self.client, self.out, self.fields, self.console = client, out, fields, console
        self.pdf = fields.get("output") == "pdf"  # --pdf: each input's searchable PDF too
        self.force = force  # --force: read every input again, whatever the record says
        self.stop = stop or threading.Event()  # set by Ctrl-C; the client's sleeps end with it (main)
        self.jobs_waited: dict[str, str] = {}  # input name -> the job a worker waits on
        self.state = State(out)
        self.max_upload_bytes = max_upload_mb * 1024 * 1024
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=console, transient=False,
        )  # fmt: skip
        self.files_bar: TaskID | None = None

    def read_all(self, inputs: list[Input], concurrency: int) -> list[Outcome | None]:
        """Read every input, ``concurrency`` at a time; after Ctrl-C, at once what is finished (None: left).

        The workers are daemon threads, so that a stopped run exits without waiting for a request in flight; what
        they were doing is redone or waited on by the next run (nothing is written after the stop).
        """
        outcomes: list[Outcome | None] = [None] * len(inputs)
        todo: queue.SimpleQueue[tuple[int, Input]] = queue.SimpleQueue()
        for position, item in enumerate(inputs):
            todo.put((position, item))
        with self.progress:
            self.files_bar = self.progress.add_task("files", total=len(inputs))
            workers = [threading.Thread(target=self._work, args=(todo, outcomes), daemon=True)
                       for _ in range(min(concurrency, len(inputs)))]  # fmt: skip
            for worker in workers:
                worker.start()
            try:
                for worker in workers:
                    while worker.is_alive():
                        worker.join(JOIN_S)
            except KeyboardInterrupt:
                self.stop.set()
        return outcomes

    def _work(self, todo: queue.SimpleQueue[tuple[int, Input]], outcomes: list[Outcome | None]) -> None:
        while not self.stop.is_set():
            try:
                position, item = todo.get_nowait()
            except queue.Empty:
                return
            outcomes[position] = self.read_one(item)

    def read_one(self, item: Input) -> Outcome | None:
        """Read one input and write its results; None when the run was stopped before it was finished."""
        try:
            return self._read_one(item)
        except Interrupted:
            return None

    def _read_one(self, item: Input) -> Outcome:
        outcome = Outcome(item.name)
        try:
            digest = _digest(item.path)
            done = self.state.data["done"].get(digest)
            if not self.force and self._made_so(done, item) and self._written(item):
                outcome.pages, outcome.skipped = done["pages"], True
            else:
                result, job_id = self._result(item, digest)
                if self.stop.is_set():  # nothing is written after Ctrl-C: the next run does it
                    raise Interrupted()
                if self.pdf and job_id:
                    self.client.job_result_pdf(job_id, self._pdf_output(item))
                self._write(item, result)
                outcome.pages = _pages(result)
                self.state.update("done", digest, {"name": item.name, "pages": outcome.pages, "options": self.fields})
                self.state.update("jobs", digest, None)
        except ApiError as error:
            outcome.error = str(error)
        except (OSError, requests.RequestException) as error:
            outcome.error = f"{type(error).__name__}: {error}"
        assert self.files_bar is not None
        self.progress.advance(self.files_bar)
        return outcome

    def _made_so(self, record: dict[str, Any] | None, item: Input) -> bool:
        """Whether a record (a finished input's, a queued job's) was made for this input with this run's options: a
        result made with other options (another --task, --pages...) is not this run's, and is made again."""
        return bool(record) and record.get("name", item.name) == item.name and record.get("options") == self.fields

    def _result(self, item: Input, digest: str) -> tuple[dict[str, Any], str | None]:
        """The input's result, and the job that made it (None: /ocr did)."""
        if not self.pdf and not item.is_document and item.path.stat().st_size <= self.max_upload_bytes:
            return self.client.ocr(item.path, **self.fields), None
        queued = self.state.data["jobs"].get(digest)
        job_id = queued["id"] if isinstance(queued, dict) and self._made_so(queued, item) and not self.force else None
        if job_id:
            try:
                self.client.job(job_id)  # still there (same service, not expired): wait on it, do not queue again
                self.console.print(f"{item.name}: waiting on job {job_id}, queued by an earlier run")
            except ApiError as error:
                if error.status != 404:
                    raise
                job_id = None
        if not job_id:
            job_id = self.client.submit_job(item.path, **self.fields)["id"]
            self.state.update("jobs", digest, {"id": job_id, "options": self.fields})
        bar = self.progress.add_task(f"  {item.name}", total=None)

        def show(view: dict[str, Any]) -> None:
            progress = view["progress"]
            self.progress.update(bar, completed=progress["pages_done"], total=progress["pages_total"],
                                 description=f"  {item.name}{job_state(view)}")  # fmt: skip

        self.jobs_waited[item.name] = job_id
        try:
            view = self.client.wait_for_job(job_id, show)
        finally:
            self.progress.remove_task(bar)
        del self.jobs_waited[item.name]
        if view["status"] == "cancelled":
            self.state.update("jobs", digest, None)
            raise ApiError(409, "job_cancelled", "The job was cancelled on the service.")
        return self.client.job_result(job_id), job_id

    def _outputs(self, item: Input) -> tuple[Path, Path]:
        return self.out / f"{item.name}.md", self.out / f"{item.name}.json"

    def _written(self, item: Input) -> bool:
        return self._outputs(item)[1].exists() and (not self.pdf or (self.out / f"{item.name}.pdf").exists())

    def _pdf_output(self, item: Input) -> Path:
        path = self.out / f"{item.name}.pdf"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _write(self, item: Input, result: dict[str, Any]) -> None:
        markdown, answer = self._outputs(item)
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(result.get("markdown") or result.get("text") or "")
        answer.write_text(json.dumps(result, indent=1, ensure_ascii=False))  # last: its presence means done


def job_state(view: dict[str, Any]) -> str:
    """What a job's bar says beside its name, when its pages alone do not tell: queued (and behind how many), or
    waiting for the engine to come back."""
    error = view.get("error") or {}
    if view["status"] == "queued":
        if error.get("retrying"):
            return f": waiting, the engine is unavailable ({error.get('code')}); it will be tried again"
        position = view.get("queue_position")
        ahead = f", {position - 1} job(s) ahead" if isinstance(position, int) and position > 1 else ""
        return f": queued{ahead}"
    return ""


def left_behind(run: Run, inputs: list[Input], outcomes: list[Outcome | None]) -> str:
    """What a stopped run says it leaves: how far it got, each input not finished, the jobs that go on."""
    left = [item.name for item, outcome in zip(inputs, outcomes, strict=True) if outcome is None]
    named = [f"{name} (job {run.jobs_waited[name]} goes on on the service)" if name in run.jobs_waited else name
             for name in left]  # fmt: skip
    shown = some(named)
    return (
        f"interrupted: {len(inputs) - len(left)} of {len(inputs)} inputs finished; left: {shown}. Run the same command "
        "again to go on: finished inputs are skipped, and queued jobs waited on, not sent again."
    )


def summary(outcomes: list[Outcome]) -> Table:
    table = Table(title="DeepSeek-OCR")
    for column in ("file", *PAGE_STATUSES, "note"):
        table.add_column(column, justify="left" if column in ("file", "note") else "right")
    for outcome in outcomes:
        note = outcome.error or ("already done" if outcome.skipped else "")
        table.add_row(outcome.name, *(str(outcome.pages.get(status, 0)) for status in PAGE_STATUSES), note)
    totals = [sum(outcome.pages.get(status, 0) for outcome in outcomes) for status in PAGE_STATUSES]
    failed = sum(outcome.error is not None for outcome in outcomes)
    table.add_row("total", *map(str, totals), f"{failed} of {len(outcomes)} files failed" if failed else "")
    return table


def parser() -> argparse.ArgumentParser:
    command = argparse.ArgumentParser(prog="deepseek-ocr", description="OCR files, folders and globs with the service.")
    command.add_argument("inputs", nargs="+", help="files, folders (searched recursively) and globs")
    command.add_argument("--url", default=os.environ.get(URL_VARIABLE, DEFAULT_URL),
                         help=f"the service (default: ${URL_VARIABLE}, else {DEFAULT_URL})")  # fmt: skip
    command.add_argument("--out", type=Path, default=Path("ocr-results"), help="where results go (ocr-results)")
    command.add_argument("--api-key", default=os.environ.get(KEY_VARIABLE), help=f"default: ${KEY_VARIABLE}")
    command.add_argument("--concurrency", type=int, default=4, help="files in flight at once (4)")
    command.add_argument("--task", default="markdown", help="markdown, free, ocr, figure, describe")
    command.add_argument("--mode", help="gundam or base")
    command.add_argument("--pages", help="the pages of each PDF, as 1-3,7")
    command.add_argument("--max-tokens", help="the output budget per page")
    command.add_argument("--max-upload-mb", type=int, default=16,
                         help="the service's MAX_UPLOAD_MB: larger images go as jobs (16)")  # fmt: skip
    command.add_argument("--retries", type=int, default=8, help="tries again on 503 and 429, honouring Retry-After")
    command.add_argument("--pdf", action="store_true",
                         help="also write each input's searchable PDF, <name>.pdf")  # fmt: skip
    command.add_argument("--force", action="store_true",
                         help="read every input again, even those a run finished with the same options")  # fmt: skip
    return command


def _fields(arguments: argparse.Namespace) -> Iterator[tuple[str, str]]:
    for name in ("task", "mode", "pages", "max_tokens"):
        value = getattr(arguments, name)
        if value:
            yield name, str(value)
    if arguments.pdf:
        yield "output", "pdf"


def main(argv: list[str] | None = None) -> int:
    arguments = parser().parse_args(argv)
    console = Console(stderr=True)
    if arguments.concurrency < 1:
        console.print("error: --concurrency must be 1 or more")
        return 2
    skipped: list[Path] = []
    try:
        inputs = find_inputs(arguments.inputs, skipped)
    except FileNotFoundError as error:
        console.print(f"error: {error}")
        return 2
    if skipped:
        names = some([str(path) for path in skipped])
        console.print(f"skipped {len(skipped)} file(s) that are not images or PDFs: {names}", soft_wrap=True)
    if not inputs:
        console.print("error: no images or PDFs among the inputs")
        return 2
    arguments.out.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    client = Client(
        arguments.url,
        arguments.api_key,
        retries=arguments.retries,
        sleep=partial(sleep_unless_stopped, stop),
        on_retry=lambda error, wait_s: console.print(f"service busy: {error}; trying again in {wait_s:g} s"),
    )
    try:
        client.session.get(f"{client.base_url}/health", timeout=10).raise_for_status()
    except requests.RequestException as error:
        console.print(f"error: the service at {arguments.url} does not answer: {error}")
        return 1
    fields = dict(_fields(arguments))
    run = Run(client, arguments.out, fields, console, arguments.max_upload_mb, stop=stop, force=arguments.force)
    outcomes = run.read_all(inputs, arguments.concurrency)
    if stop.is_set():
        console.print(left_behind(run, inputs, outcomes), soft_wrap=True)  # whole lines: job ids copied from them
        return INTERRUPTED_STATUS
    finished = [outcome for outcome in outcomes if outcome is not None]
    Console().print(summary(finished))
    return 1 if any(outcome.error for outcome in finished) else 0


if __name__ == "__main__":
    sys.exit(main())
