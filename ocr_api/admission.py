"""Admission control and sharing: a bound on the pages one process has at the engine, refusing at once past it; the
jobs' share of it, handed out fairly between keys and their jobs; and the priority each page is sent with."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass

from ocr_api.errors import Overloaded
from ocr_api.metrics import ADMISSION_REFUSALS, PAGES_IN_FLIGHT

INTERACTIVE, JOB = "interactive", "job"  # the two classes of pages: someone waits at the other end, or a job runs
# Each page a sender already has at the engine places its next page as if sent this much later (EnginePriorities).
SENDER_STEP_MS = 1000


@dataclass(frozen=True)
class Sender:
    """Who a stream's pages are for: their class, the client (an API key's digest, else an address; a job's owner)
    and the request or job itself."""

    kind: str  # INTERACTIVE or JOB
    client: str
    stream: str  # the request's or job's id


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

    def try_take(self, sender: Sender | None = None) -> bool:
        """Take one slot if one is free."""
        with self._lock:
            if self.in_flight >= self.limit:
                return False
            self.in_flight += 1
        PAGES_IN_FLIGHT.inc()
        return True

    def keeps(self, sender: Sender | None) -> bool:
        """Whether ``sender`` may hand the slot of a page just answered on to its next page (a request always may)."""
        return True

    def release(self, slots: int, sender: Sender | None = None) -> None:
        with self._lock:
            self.in_flight -= slots
        PAGES_IN_FLIGHT.dec(slots)

    def forget(self, sender: Sender) -> None:
        """The sender's stream has ended: it waits for nothing any more."""

    def wait_for_room(self, timeout: float) -> None:
        """Wait until a slot may have freed, ``timeout`` at most (a stream with nothing at the engine)."""
        time.sleep(timeout)

    def refusal(self) -> Overloaded:
        """The 503 a request gets when it cannot send its first page (counted)."""
        ADMISSION_REFUSALS.inc()
        return Overloaded(
            f"The service is at capacity: {self.in_flight} of {self.limit} pages are at the OCR engine in this "
            "process. Try again after the time in Retry-After."
        )


class Share(Admission):
    """At most ``limit`` of a parent bound's slots: the pages jobs may have at the engine, so that synchronous
    requests in the same process keep the rest of MAX_PAGES_IN_FLIGHT.

    Shared fairly: a slot that frees goes to the waiting job whose key holds the fewest slots, then to that key's
    job holding the fewest; a job whose key holds more than a waiting one's gives the slot of each answered page
    back instead of handing it on, until they are even. Nobody waiting, any job takes what is free.
    """

    def __init__(self, parent: Admission, limit: int):
        super().__init__(limit)
        self.parent = parent
        self._held: Counter[Sender] = Counter()
        self._waiting: set[Sender] = set()
        self._freed = threading.Condition(self._lock)

    def check_room(self) -> None:
        """A job never refuses: it waits for a slot."""

    def try_take(self, sender: Sender | None = None) -> bool:
        with self._lock:
            its_turn = sender is None or not self._someone_before(sender, handing_on=False)
            if not its_turn or self.in_flight >= self.limit or not self.parent.try_take():
                if sender is not None:
                    self._waiting.add(sender)
                return False
            self.in_flight += 1
            if sender is not None:
                self._waiting.discard(sender)
                self._held[sender] += 1
            return True

    def keeps(self, sender: Sender | None) -> bool:
        if sender is None:
            return True
        with self._lock:
            return not self._someone_before(sender, handing_on=True)

    def release(self, slots: int, sender: Sender | None = None) -> None:
        with self._lock:
            self.in_flight -= slots
            if sender is not None:
                self._held[sender] -= slots
                if self._held[sender] <= 0:
                    del self._held[sender]
            self._freed.notify_all()
        self.parent.release(slots)

    def forget(self, sender: Sender) -> None:
        with self._lock:
            self._waiting.discard(sender)

    def wait_for_room(self, timeout: float) -> None:
        """Wait until another job gives a slot back (or ``timeout``): a waiting job takes it at once."""
        with self._freed:
            self._freed.wait(timeout)

    def holding(self, sender: Sender) -> int:
        """Slots ``sender`` holds now."""
        with self._lock:
            return self._held[sender]

    def _someone_before(self, sender: Sender, handing_on: bool) -> bool:
        """Whether a waiting job should have the next slot before ``sender`` (holding one more when handing on)."""
        others = self._waiting - {sender}
        if not others:
            return False
        held_by_client: Counter[str] = Counter()
        for holder, slots in self._held.items():
            held_by_client[holder.client] += slots
        spare = 1 if handing_on else 0
        clients_own, own = held_by_client[sender.client] - spare, self._held[sender] - spare
        for other in others:
            if other.client != sender.client:
                if held_by_client[other.client] < clients_own:
                    return True
            elif self._held[other] < own:
                return True
        return False


class EnginePriorities:
    """The priority each page is sent with (vLLM: lower first), from the pages each sender has at the engine.

    A page's priority is the time it is sent, in milliseconds, made later by ``job_delay_s`` for a job's page and by
    SENDER_STEP_MS for each page its client already has at the engine from this process (of its class). With vLLM's
    priority scheduling, which orders waiting pages by (priority, arrival), this puts a person's page before the
    job pages waiting there, and a client with a few pages at the engine before one with many; and since the number
    grows with time, a job's page waits for interactive pages sent at most ``job_delay_s`` (plus its client's
    steps) after it, then goes before every newer one: no page starves. Under vLLM's default (fcfs) it is accepted
    and ignored.
    """

    def __init__(self, job_delay_s: float):
        self.job_delay_ms = round(job_delay_s * 1000)
        self._at_engine: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def sent(self, sender: Sender | None, now: float | None = None) -> int:
        """Count a page sent for ``sender`` and return its priority."""
        now_ms = round((time.time() if now is None else now) * 1000)
        if sender is None:
            return now_ms
        with self._lock:
            ahead = self._at_engine[(sender.kind, sender.client)]
            self._at_engine[(sender.kind, sender.client)] += 1
        return now_ms + (self.job_delay_ms if sender.kind == JOB else 0) + ahead * SENDER_STEP_MS

    def answered(self, sender: Sender | None) -> None:
        """A page of ``sender``'s is no longer at the engine."""
        if sender is None:
            return
        with self._lock:
            self._at_engine[(sender.kind, sender.client)] -= 1
            if self._at_engine[(sender.kind, sender.client)] <= 0:
                del self._at_engine[(sender.kind, sender.client)]
