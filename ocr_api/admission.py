"""Admission control: a bound on the pages one process has at the engine, refusing at once past it."""

from __future__ import annotations

import threading

from ocr_api.errors import Overloaded
from ocr_api.metrics import ADMISSION_REFUSALS, PAGES_IN_FLIGHT


class Admission:
    """Counts pages at the engine and not yet answered; vLLM's own queue has no bound, so this one refuses instead.

    A request takes a slot for each page it sends and hands the slot on to its next page, so a request that has
    started always finishes; it refuses (503) only a request that cannot send its first page.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.in_flight = 0
        self._lock = threading.Lock()

    def check_room(self) -> None:
        """Refuse at once when the bound is reached, before a request spends time decoding its files."""
        with self._lock:
            if self.in_flight >= self.limit:
                raise self.refusal()

    def try_take(self) -> bool:
        """Take one slot if one is free."""
        with self._lock:
            if self.in_flight >= self.limit:
                return False
            self.in_flight += 1
        PAGES_IN_FLIGHT.inc()
        return True

    def release(self, slots: int) -> None:
        with self._lock:
            self.in_flight -= slots
        PAGES_IN_FLIGHT.dec(slots)

    def refusal(self) -> Overloaded:
        """The 503 a request gets when it cannot send its first page (counted)."""
        ADMISSION_REFUSALS.inc()
        return Overloaded(
            f"The service is at capacity: {self.in_flight} of {self.limit} pages are at the OCR engine in this "
            "process. Try again after the time in Retry-After."
        )


class Share(Admission):
    """At most ``limit`` of a parent bound's slots: the pages jobs may have at the engine, so that synchronous
    requests in the same process keep the rest of MAX_PAGES_IN_FLIGHT."""

    def __init__(self, parent: Admission, limit: int):
        super().__init__(limit)
        self.parent = parent

    def check_room(self) -> None:
        """A job never refuses: it waits for a slot."""

    def try_take(self) -> bool:
        with self._lock:
            if self.in_flight >= self.limit or not self.parent.try_take():
                return False
            self.in_flight += 1
            return True

    def release(self, slots: int) -> None:
        with self._lock:
            self.in_flight -= slots
        self.parent.release(slots)
