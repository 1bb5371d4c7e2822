"""Where uploads live while they are processed: generated names, removed afterwards on every path."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)


class UploadStore:
    """Stores uploaded bytes under generated names; the client's filename never reaches the disk."""

    def __init__(self, folder: str | Path, keep: bool = False):
        self.folder = Path(folder)
        self.keep = keep

    @contextmanager
    def session(self) -> Iterator[UploadSession]:
        """Yield a session whose files are removed when it ends, unless uploads are kept."""
        session = UploadSession(self)
        try:
            yield session
        finally:
            if not self.keep:
                session.remove_all()


class UploadSession:
    """The files stored for one request."""

    def __init__(self, store: UploadStore):
        self._store = store
        self.paths: list[Path] = []

    def save(self, data: bytes, extension: str) -> Path:
        """Write ``data`` under a fresh random name and return its path (relative to the working directory)."""
        self._store.folder.mkdir(parents=True, exist_ok=True)
        path = self._store.folder / f"{uuid.uuid4().hex}.{extension}"
        # "xb": a name that somehow exists already is an error, never an overwrite.
        with open(path, "xb") as handle:
            self.paths.append(path)
            handle.write(data)
        return path

    def remove_all(self) -> None:
        for path in self.paths:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                logger.warning("could not remove upload %s", path, exc_info=True)
        self.paths.clear()
