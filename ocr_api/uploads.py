"""Where uploads live while they are processed: generated names, removed afterwards, and never outliving a crash.

Each stored file is held under an exclusive ``flock`` by the process using it, for as long as it uses it. A process
that dies (SIGKILL, OOM) drops its locks with it, so a file nobody holds a lock on belongs to no running request:
every process sweeps such files away when it starts (gunicorn starting a worker in place of a dead one included),
and leaves the files of its running siblings alone.
"""

from __future__ import annotations

import fcntl
import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)


class UploadStore:
    """Stores uploaded bytes under generated names; the client's filename never reaches the disk."""

    def __init__(self, folder: str | Path, keep: bool = False):
        self.folder = Path(folder)
        self.keep = keep
        if not keep:  # kept uploads are wanted after their request; sweeping would remove them at a restart
            self.removed_at_start = sweep_stale_uploads(self.folder)

    @contextmanager
    def session(self) -> Iterator[UploadSession]:
        """Yield a session whose files are removed when it ends, unless uploads are kept."""
        session = UploadSession(self)
        try:
            yield session
        finally:
            session.close()


class UploadSession:
    """The files stored for one request, each locked while the request runs."""

    def __init__(self, store: UploadStore):
        self._store = store
        self._held: list[tuple[Path, BinaryIO]] = []

    @property
    def paths(self) -> list[Path]:
        return [path for path, _ in self._held]

    def save(self, data: bytes, extension: str) -> Path:
        """Write ``data`` under a fresh random name, locked until the session ends; return its path."""
        self._store.folder.mkdir(parents=True, exist_ok=True)
        while True:
            path = self._store.folder / f"{uuid.uuid4().hex}.{extension}"
            # "xb": a name that somehow exists already is an error, never an overwrite.
            handle = open(path, "xb")  # noqa: SIM115 - held open (and locked) until the session closes
            fcntl.flock(handle, fcntl.LOCK_EX)
            if _same_file(handle, path):
                break
            # A sweeper starting in another process took the file between open and lock: make another.
            handle.close()
        self._held.append((path, handle))
        handle.write(data)
        handle.flush()
        return path

    def close(self) -> None:
        """Remove the files (unless kept), then let go of their locks."""
        for path, handle in self._held:
            if not self._store.keep:
                try:
                    path.unlink(missing_ok=True)
                except OSError:
                    logger.warning("could not remove upload %s", path, exc_info=True)
            handle.close()
        self._held.clear()


def sweep_stale_uploads(folder: Path) -> int:
    """Remove the files in ``folder`` that no live process holds a lock on; return how many were removed."""
    if not folder.is_dir():
        return 0
    removed = 0
    for path in folder.iterdir():
        if path.name.startswith(".") or not path.is_file():  # .gitkeep and the like are not uploads
            continue
        try:
            with open(path, "rb") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                path.unlink()
        except BlockingIOError:
            continue  # a running request's file
        except OSError:
            logger.warning("could not remove stale upload %s", path, exc_info=True)
            continue
        removed += 1
    if removed:
        logger.warning("removed %d upload(s) left behind by a process that died mid-request", removed)
    return removed


def _same_file(handle: BinaryIO, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except FileNotFoundError:
        return False
