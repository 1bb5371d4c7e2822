"""Turns: which jobs a consumer runs when more are queued than it holds open, so that a new job starts within about a
page's time and no key's jobs crowd out another's.

Huey stays the queue (first in, first out); a consumer holds JOB_WORKERS jobs open, and this decides two things:

- when a job is taken from the queue while a job of another key waits there that this consumer runs fewer of (or
  as many, and started one of longer ago), the job goes back to the end of the queue unrun (``defers``): the queue
  is taken round-robin across keys;
- when every place is taken and a job waits in the queue, the open job longest at work (of the key with most open
  jobs here) gives its place once it has run JOB_TURN_S (``should_yield``): it sends no more pages, its pages at
  the engine finish and are stored, and it is queued again at the end.

Several consumers (Redis) each decide for their own jobs; the queue is shared, so a waiting job starts at whichever
place frees first.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

WAITING_CHECK_S = 1.0  # how often the queue is read for the keys of the jobs waiting in it


@dataclass
class _Open:
    owner: str
    started: float  # monotonic: when this run began


class Turns:
    """The jobs this consumer holds open, and the keys of those waiting in the shared queue."""

    def __init__(self, places: int, turn_s: float, waiting_owners: Callable[[], list[str]]):
        self.places = places
        self.turn_s = turn_s
        self._waiting_owners = waiting_owners  # the owner of each job waiting in the queue, first in line first
        self._open: dict[str, _Open] = {}
        self._last_started: dict[str, float] = {}  # when this consumer last opened a job of each owner
        self._yielding: str | None = None
        self._waiting: list[str] = []
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def opened(self, job_id: str, owner: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._open[job_id] = _Open(owner, now)
            self._last_started[owner] = now

    def closed(self, job_id: str) -> None:
        with self._lock:
            self._open.pop(job_id, None)
            if self._yielding == job_id:
                self._yielding = None

    def defers(self, owner: str) -> bool:
        """Whether a job of ``owner`` just taken from the queue should go back to its end: a job of another key
        waits that this consumer runs fewer of, or as many and started one of longer ago (or never)."""
        with self._lock:
            running = Counter(job.owner for job in self._open.values())
            served = dict(self._last_started)

        def turn(key: str) -> tuple[int, float]:
            return running[key], served.get(key, float("-inf"))

        # Read now, not from the last second's reading: a job that went back is itself waiting in the queue.
        return any(other != owner and turn(other) < turn(owner) for other in self._waiting_owners())

    def should_yield(self, job_id: str) -> bool:
        """Whether ``job_id`` should give its place now (asked before each page it sends)."""
        with self._lock:
            if self._yielding is not None:
                return self._yielding == job_id
            job = self._open.get(job_id)
            if job is None or len(self._open) < self.places or time.monotonic() - job.started < self.turn_s:
                return False
        if not self._waiting_now():
            return False
        with self._lock:
            if self._yielding is not None or job_id not in self._open:
                return self._yielding == job_id
            running = Counter(open_job.owner for open_job in self._open.values())
            # The job to give way: of the key with most open jobs here, the one longest at work, if it had its turn.
            now = time.monotonic()
            candidates = [open_id for open_id, job in self._open.items() if now - job.started >= self.turn_s]
            chosen = min(
                candidates, key=lambda open_id: (-running[self._open[open_id].owner], self._open[open_id].started)
            )
            if chosen == job_id:
                self._yielding = job_id
            return chosen == job_id

    def _waiting_now(self) -> list[str]:
        """The owners of the jobs waiting in the queue, read at most once a WAITING_CHECK_S."""
        with self._lock:
            fresh = time.monotonic() - self._read_at < WAITING_CHECK_S
            if fresh:
                return self._waiting
        waiting = self._waiting_owners()
        with self._lock:
            self._waiting, self._read_at = waiting, time.monotonic()
        return waiting
