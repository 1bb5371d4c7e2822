"""`python -m ocr_api.jobs.consumer`: the job consumer as a process of its own, beside gunicorn's workers.

start_production.sh runs it on the same (remote) engine as the workers. It runs JOB_WORKERS jobs at once until
SIGTERM, then stops them at their next page; they are queued again and go on from there at the next start.
"""

from __future__ import annotations

import logging
import sys

from ocr_api.engines import EngineLoadError, build_engine
from ocr_api.jobs.queue import JobQueue
from ocr_api.jobs.service import Jobs
from ocr_api.logs import configure_logging
from ocr_api.settings import ConfigError, Settings

logger = logging.getLogger("ocr_api.jobs.consumer")


def main() -> int:
    from ocr_api.service import OcrService

    try:
        settings = Settings.from_env()
        configure_logging(settings)
        service = OcrService(settings, build_engine(settings))
        service.start()
    except (ConfigError, EngineLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    jobs = Jobs(service, JobQueue(settings))
    try:
        jobs.queue.run_consumer_forever(jobs.runner())
    finally:
        service.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
