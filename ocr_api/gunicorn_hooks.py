"""gunicorn's server hooks (``--config python:ocr_api.gunicorn_hooks``); start_production.sh's flags set the rest.

Imported by gunicorn's master, which stays light: no Flask app, no engine.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any


def child_exit(server: Any, worker: Any) -> None:
    """A worker exited (restarted, killed): drop its live gauges from the metrics; its counters stay counted."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def when_ready(server: Any) -> None:
    """SIGTERM drains before gunicorn's graceful stop, however the API is stopped (compose, a supervisor, kill).

    gunicorn alone stops accepting at SIGTERM, and a request sent meanwhile waits in the socket's backlog until the
    workers are gone, then gets nginx's 502. Drained, the workers go on accepting for DRAIN_SECONDS and answer new
    requests 503 ``shutting_down`` with Retry-After at once (and /ready 503, for load balancers), while running ones
    go on; then gunicorn's own graceful stop. A drain begun before the signal (start_production.sh's, the systemd
    unit's ExecStop: DRAIN_FILE already there) counts: gunicorn stops once DRAIN_SECONDS have passed since it began.
    Without DRAIN_FILE there is no drain to run. SIGQUIT and SIGINT keep gunicorn's meaning: stop at once.
    """
    drain_file = os.environ.get("DRAIN_FILE", "")
    if not drain_file:
        return
    seconds = float(os.environ.get("DRAIN_SECONDS", "5") or 0)
    graceful_stop = server.handle_term
    drained = threading.Event()

    def drain_then_stop() -> None:
        if drained.is_set():
            graceful_stop()
            return
        left = seconds - _draining_for(drain_file)
        drained.set()
        if left <= 0:
            graceful_stop()
            return
        server.log.info("draining for %.1f s: new requests get 503 shutting_down, running ones go on", left)
        timer = threading.Timer(left, os.kill, (os.getpid(), signal.SIGTERM))
        timer.daemon = True
        timer.start()

    server.handle_term = drain_then_stop  # the arbiter looks its handlers up by name on each signal


def _draining_for(drain_file: str) -> float:
    """Seconds since the drain began (its file's time), beginning it now if it had not."""
    try:
        return max(0.0, time.time() - os.stat(drain_file).st_mtime)
    except FileNotFoundError:
        with open(drain_file, "a"):
            pass
        return 0.0
