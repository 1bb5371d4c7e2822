"""gunicorn's server hooks (``--config python:ocr_api.gunicorn_hooks``); start_production.sh's flags set the rest.

Imported by gunicorn's master, which stays light: no Flask app, no engine.
"""

from __future__ import annotations

import os
from typing import Any


def child_exit(server: Any, worker: Any) -> None:
    """A worker exited (restarted, killed): drop its live gauges from the metrics; its counters stay counted."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
