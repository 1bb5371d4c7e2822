"""The job queue: Huey (SqliteHuey under JOBS_DIR, or RedisHuey with REDIS_URL; one code path for both), the task
that runs a job, the consumer that runs tasks, and the warden that restarts orphaned jobs and expires old ones."""

from __future__ import annotations

import fcntl
import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from huey import Huey, RedisHuey, SqliteHuey
from huey.api import Task
from huey.consumer import Consumer
from huey.exceptions import TaskLockedException

from ocr_api.jobs import callbacks
from ocr_api.jobs.store import Job, JobStore
from ocr_api.jobs.turns import Turns
from ocr_api.settings import Settings

logger = logging.getLogger(__name__)

QUEUE_NAME = "deepseek-ocr-jobs"
RUN_JOB_TASK = "run_job"  # the task that runs a job; the queue also holds callbacks to deliver
HEARTBEAT_S = 2.0  # how often a running job says it is alive
STALE_S = 15.0  # a running job silent this long lost its consumer (killed): the warden runs it again
WARDEN_EVERY_S = 5.0
IDLE_POLL_S = 0.25
EXPIRE_EVERY_S = 60.0

CALLBACK_RETRIES = 3
CALLBACK_RETRY_DELAY_S = 2  # the first retry's delay; each next one is CALLBACK_RETRY_BACKOFF times the last
CALLBACK_RETRY_BACKOFF = 4

# What runs a job: its id, its retries left and whether the consumer is stopping; returns the job when it must be
# queued again.
RunJob = Callable[[str, int, Callable[[], bool]], Job | None]
NOBODY = ""  # the owner of jobs submitted without API keys: they share as one key's jobs do


class PlannedRetry(Exception):
    """Raised from a task to have Huey run it again later: planned, and logged in one line by whoever raises it, so
    Huey's own "Unhandled exception in task" record, with its traceback, is left out of the log."""


def _not_a_planned_retry(record: logging.LogRecord) -> bool:
    return not (record.exc_info and isinstance(record.exc_info[1], PlannedRetry))


logging.getLogger("huey").addFilter(_not_a_planned_retry)


class CallbackFailed(PlannedRetry):
    """Raised to Huey so that it delivers the callback again later."""


class JobQueue:
    """The queue and the job state every API process and consumer of a deployment shares."""

    def __init__(self, settings: Settings):
        self.settings = settings
        root = Path(settings.jobs_dir)
        if settings.redis_url:
            self.huey: Huey = RedisHuey(QUEUE_NAME, url=settings.redis_url, results=False)
        else:
            root.mkdir(parents=True, exist_ok=True)
            # WAL (Huey's default journal): readers (API workers polling) never block the consumer's writes. A
            # 2 MB page cache per connection (Huey's default is 8) is plenty for records read by key.
            self.huey = SqliteHuey(
                QUEUE_NAME, filename=str(root / "queue.db"), results=False, journal_mode="wal", cache_mb=2
            )
        self.store = JobStore(self.huey, root)
        self.turns = Turns(settings.job_workers, settings.job_turn_s, self.waiting_owners)
        self.runner: RunJob | None = None  # set in processes that run jobs, not in those that only queue them
        self._consumer: Consumer | None = None
        self._warden: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock_file: IO[str] | None = None
        self.run_job = self.huey.task(
            retries=settings.job_engine_retries, retry_delay=settings.job_retry_delay_s, context=True, name=RUN_JOB_TASK
        )(self._run_job)
        self.deliver_callback = self.huey.task(
            retries=CALLBACK_RETRIES,
            retry_delay=CALLBACK_RETRY_DELAY_S,
            retry_backoff=CALLBACK_RETRY_BACKOFF,
            context=True,
            name="deliver_callback",
        )(self._deliver_callback)

    def enqueue(self, job: Job, waiting_for: str = "consumer") -> None:
        """Save the job as queued, with the id of its task and what it waits for, then queue the task (which may
        start at once). The task names the job's owner, so that a consumer takes the queue round-robin by key."""
        task = self.run_job.s(job.id, job.owner or NOBODY)
        job.status, job.task_id, job.waiting_for = "queued", task.id, waiting_for
        self.store.save(job)
        self.huey.enqueue(task)

    def queue_position(self, task_id: str) -> int | None:
        """1 for the next job to start; None when the task is not waiting in the queue (running, or retrying)."""
        for position, task in enumerate(self.huey.pending(), start=1):
            if task.id == task_id:
                return position
        return None

    def queue_depth(self) -> int:
        return self.huey.pending_count()

    def waiting_job_ids(self) -> list[str]:
        """The jobs waiting for a consumer, first in line first (not the callbacks waiting to be delivered)."""
        return [str(task.args[0]) for task in self._waiting_tasks()]

    def waiting_owners(self) -> list[str]:
        """The owner of each job waiting for a consumer, first in line first (a task queued before owners were
        named counts as nobody's)."""
        return [str(task.args[1]) if len(task.args) > 1 else NOBODY for task in self._waiting_tasks()]

    def _waiting_tasks(self) -> list[Task]:
        return [task for task in self.huey.pending() if task.name == RUN_JOB_TASK]

    def _run_job(self, job_id: str, owner: str = NOBODY, *, task: Task) -> None:
        if self.runner is None:
            raise RuntimeError("this process queues jobs but does not run them")
        if self.turns.defers(owner):
            # Another key's job waits and this consumer runs fewer of its jobs: this one goes back to the end of the
            # queue, the same task (its record, which the API may be writing to cancel it, is left alone).
            self.huey.enqueue(task)
            return
        # One run of a job at a time, wherever it is queued twice (a restart, two wardens).
        try:
            with self.huey.lock_task(f"job-{job_id}"):
                again = self.runner(job_id, task.retries, self._stopping.is_set)
        except TaskLockedException:
            logger.info("job %s is already running elsewhere", job_id)
            return
        if again is not None:  # queued only now that the lock is free: another consumer may take it at once
            self.enqueue(again, again.waiting_for)

    def _deliver_callback(self, job_id: str, task: Task) -> None:
        """POST the finished job's view to its callback_url; Huey tries again on failure, 2, 8 and 32 s after the
        failed attempt ends (its delay is counted from then: docs/API_DOCUMENTATION.md says so, a test checks)."""
        job = self.store.get(job_id)
        if job is None or not job.callback_url:
            return
        attempt = CALLBACK_RETRIES + 1 - task.retries
        try:
            status = callbacks.post(
                job.callback_url, job.view(time.time(), for_callback=True), self.settings.callback_secret,
                self.settings.callback_allow_private,
            )  # fmt: skip
            problem = None if status < 300 else f"answered {status}"
        except Exception as exc:  # noqa: BLE001 - refused, unreachable, timed out: all a failed delivery
            status, problem = None, f"{type(exc).__name__}: {exc}"[:300]
        job.callback = {"delivered": problem is None, "status": status, "attempts": attempt}
        if problem:
            job.callback["error"] = problem
        self.store.save(job)
        if problem and task.retries:
            logger.warning("job %s: callback %s; trying again", job_id, problem)
            raise CallbackFailed(problem)

    # The consumer and the warden: in the serving process with an in-process engine, else in their own.

    def start_consumer(self, runner: RunJob) -> None:
        """Run jobs in threads of this process (JOB_WORKERS of them), and the warden beside them."""
        self.runner = runner
        self._stopping.clear()
        # No other consumer can be running a job: what says "running" was orphaned. Queued again before any worker
        # starts: a worker that had already taken such a job would be marked running, and then run a second time.
        if self._sole_consumer():
            self.recover(stale_s=0)
        # An idle worker looks at the queue at most IDLE_POLL_S apart (Huey backs off to it): a job submitted while
        # others run starts within that (a read of the queue four times a second per idle worker costs nothing).
        self._consumer = self.huey.create_consumer(
            workers=self.settings.job_workers, worker_type="thread", periodic=False, max_delay=IDLE_POLL_S
        )
        # Huey's consumer installs signal handlers for a process of its own; this process keeps its own handlers.
        handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        self._consumer.start()  # from the main thread, as installing (and restoring) handlers needs
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        self._warden = threading.Thread(target=self._watch, name="job-warden", daemon=True)
        self._warden.start()
        logger.info("job consumer started: %d worker(s), queue %s", self.settings.job_workers, self._where())

    def stop_consumer(self, timeout_s: float = 30.0) -> None:
        """Stop taking jobs; running ones stop at their next page and go back to the queue, nothing lost."""
        if self._consumer is None:
            return
        self._stopping.set()
        self._consumer.stop(graceful=False)
        for _, thread in self._consumer.worker_threads:
            thread.join(timeout_s)
        self._consumer = None
        if self._lock_file is not None:
            self._lock_file.close()  # the consumer lock goes with it
            self._lock_file = None
        logger.info("job consumer stopped")

    def run_consumer_forever(self, runner: RunJob) -> None:
        """The consumer as a process of its own (start_production.sh): until SIGTERM or SIGINT."""
        self.start_consumer(runner)
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        stop.wait()
        self.stop_consumer()

    def _watch(self) -> None:
        last_expiry = 0.0
        while not self._stopping.wait(WARDEN_EVERY_S):
            try:
                self.recover()
                if time.monotonic() - last_expiry >= EXPIRE_EVERY_S:
                    last_expiry = time.monotonic()
                    self.store.expire(self.settings.job_ttl)
            except Exception:
                logger.exception("job warden failed; trying again in %g s", WARDEN_EVERY_S)

    def sweep(self, now: float | None = None) -> dict[str, Any]:
        """What the warden does: queue again orphaned jobs, remove finished jobs past JOB_TTL."""
        now = time.time() if now is None else now
        return {"restarted": self.recover(now), "expired": self.store.expire(self.settings.job_ttl, now)}

    def recover(self, now: float | None = None, stale_s: float = STALE_S) -> list[str]:
        """Queue again the running jobs whose consumer died (no heartbeat for STALE_S), once whoever notices."""
        now = time.time() if now is None else now
        restarted = []
        for job in self.store.active_jobs():
            if job.status != "running" or job.heartbeat_at is None:
                continue
            if now - job.heartbeat_at >= stale_s and self.store.claim_recovery(job):
                logger.warning("job %s lost its consumer (silent %.0f s); queued again", job.id, now - job.heartbeat_at)
                self.huey.lock_task(f"job-{job.id}").clear()
                self.enqueue(job)
                restarted.append(job.id)
        return restarted

    def _sole_consumer(self) -> bool:
        """With SQLite, hold JOBS_DIR's consumer lock for this process's life: True when no other consumer runs.

        Then a restarted service takes its orphaned job up at once instead of waiting out the heartbeat. With
        Redis other nodes' consumers may be alive: only the heartbeat tells.
        """
        if self.settings.redis_url:
            return False
        self._lock_file = (Path(self.settings.jobs_dir) / "consumer.lock").open("a")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True

    def _where(self) -> str:
        return "Redis" if self.settings.redis_url else f"SQLite in {self.settings.jobs_dir}"
