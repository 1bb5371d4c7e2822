"""Uploads on disk: locked while their request runs, swept after a crash, a live sibling's files left alone."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from pathlib import Path

from ocr_api.uploads import UploadStore
from tests.conftest import REPO

HOLDER = """
import sys, time
from ocr_api.uploads import UploadStore
with UploadStore(sys.argv[1]).session() as session:
    print(session.save(b"page", "png"), flush=True)
    time.sleep(600)
"""


def _holding_process(folder: Path) -> tuple[subprocess.Popen, Path]:
    """A process in the middle of a request: it stored an upload and holds it."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    return process, Path(process.stdout.readline().strip())


def test_a_process_killed_mid_request_leaves_a_file_the_next_start_removes(tmp_path, caplog):
    folder = tmp_path / "uploads"
    folder.mkdir()
    (folder / ".gitkeep").touch()
    dead, dead_file = _holding_process(folder)
    live, live_file = _holding_process(folder)
    try:
        dead.send_signal(signal.SIGKILL)  # no cleanup runs: the file stays, its lock goes with the process
        dead.wait(timeout=10)
        assert dead_file.exists()
        with caplog.at_level(logging.WARNING, logger="ocr_api.uploads"):
            store = UploadStore(folder)  # what a replacement worker does when it starts
        assert store.removed_at_start == 1
        assert not dead_file.exists()
        assert live_file.exists()  # the sibling's request is still running
        assert (folder / ".gitkeep").exists()
        assert "removed 1 upload(s) left behind by a process that died mid-request" in caplog.text
    finally:
        live.kill()
        live.wait(timeout=10)
        live.stdout.close()
        dead.stdout.close()


def test_a_finished_request_removes_its_files_and_kept_uploads_are_never_swept(tmp_path):
    store = UploadStore(tmp_path)
    with store.session() as session:
        path = session.save(b"page", "png")
        assert path.read_bytes() == b"page"
        assert UploadStore(tmp_path).removed_at_start == 0  # a sibling starting now leaves it alone
    assert not path.exists()
    kept = UploadStore(tmp_path, keep=True)
    with kept.session() as session:
        path = session.save(b"page", "png")
    assert path.exists()
    UploadStore(tmp_path, keep=True)
    assert path.exists()
