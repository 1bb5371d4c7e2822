"""Admission control: a bound on the pages one process has at the engine, refusing at once past it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ocr_api.errors import Overloaded


class Admission:
    """Counts pages in flight to the engine; vLLM's own queue has no bound, so this one refuses instead."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_flight = 0
        self._lock = threading.Lock()

    def check_room(self) -> None:
        """Refuse at once when the bound is reached, before a request spends time decoding its files."""
        with self._lock:
            if self.in_flight >= self.limit:
                raise self._refusal(1)

    @contextmanager
    def admit(self, pages: int) -> Iterator[None]:
        """Hold ``pages`` slots while the block runs, or raise Overloaded (503) at once if they are not free."""
        with self._lock:
            if pages and self.in_flight + pages > self.limit:
                raise self._refusal(pages)
            self.in_flight += pages
        try:
            yield
        finally:
            with self._lock:
                self.in_flight -= pages

    def _refusal(self, pages: int) -> Overloaded:
        return Overloaded(
            f"The service is at capacity: {self.in_flight} of {self.limit} pages are at the OCR engine in this "
            f"process and this request needs {pages} more. Try again after the time in Retry-After."
        )
