"""DeepSeek-OCR API: the Flask application factory, and `python app.py` to serve it."""

from __future__ import annotations

import logging
import signal
import sqlite3
import sys
from typing import TYPE_CHECKING

from ocr_api.engines import EngineLoadError
from ocr_api.settings import ConfigError, Settings

if TYPE_CHECKING:
    from flask import Flask

    from ocr_api.service import OcrService

# Flask and the service are imported inside create_app(), not here: vLLM starts its engine processes by
# re-importing the main module (spawn), and they need none of it. vLLM's CPU build even fails in a process
# that has imported Flask (it probes every module attribute, and Flask's context proxies raise).

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, service: OcrService | None = None) -> Flask:
    """Build the app; without a service, the process-wide one is created and its engine loaded."""
    from flask import Flask

    from ocr_api.engines.metrics import EngineCollector
    from ocr_api.http.access import install_access_control
    from ocr_api.http.errors import register_error_handlers
    from ocr_api.http.metrics import install_metrics
    from ocr_api.http.openai_routes import openai_routes
    from ocr_api.http.routes import AsciiIntegerConverter, UploadRequest, job_pictures, job_routes, ocr_routes, probes
    from ocr_api.http.state import jobs_of
    from ocr_api.http.tracking import install_request_tracking
    from ocr_api.http.web import web
    from ocr_api.jobs.metrics import JobQueueCollector
    from ocr_api.logs import configure_logging
    from ocr_api.service import get_service

    if settings is None:
        settings = service.settings if service is not None else Settings.from_env()
    configure_logging(settings)
    if service is None:
        service = get_service(settings)
    app = Flask(__name__, static_folder=None)  # the web blueprint serves the page's files
    app.request_class = UploadRequest
    # /v1//models is not redirected to /v1/models (werkzeug's 308 has an HTML body): no such path, a JSON 404.
    app.url_map.merge_slashes = False
    app.url_map.converters["int"] = AsciiIntegerConverter  # /pages/١/ is no page number
    app.config.update(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=settings.max_content_length,
        # Flask's MAX_FORM_MEMORY_SIZE default (500 kB) bounds text fields; bounding the number of parts
        # stops a 1,000-part form before it is parsed.
        MAX_FORM_PARTS=2 * settings.max_batch_files + 16,
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False
    app.extensions["ocr_service"] = service
    register_error_handlers(app)
    install_request_tracking(app)  # first: every request has its id before keys and limits are checked
    app.register_blueprint(probes)
    app.register_blueprint(ocr_routes)
    app.register_blueprint(job_routes)
    app.register_blueprint(job_pictures)
    app.register_blueprint(openai_routes)
    app.register_blueprint(web)
    install_metrics(app, [JobQueueCollector(settings, lambda: jobs_of(app).queue), EngineCollector(service.engine)])
    install_access_control(app, settings)
    return app


def main() -> int:
    """Serve on HOST:PORT with Flask's threaded server; exit 1 with one clear line on bad settings or model."""
    try:
        settings = Settings.from_env()
        app = create_app(settings)
    except (ConfigError, EngineLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from ocr_api.http.state import jobs_of

    # Jobs run here, on the engine this process owns (one engine per machine, never a second one for jobs).
    try:
        jobs = jobs_of(app)
    except (OSError, sqlite3.Error) as exc:  # JOBS_DIR cannot be made, or its queue file cannot be opened
        print(f"error: JOBS_DIR ({settings.jobs_dir}) is not usable: {exc}", file=sys.stderr)
        app.extensions["ocr_service"].close()
        return 1
    jobs.queue.start_consumer(jobs.runner())
    # SIGTERM (a supervisor's stop) unwinds like Ctrl-C, so the engine is shut down with its child processes
    # instead of leaving them orphaned with the GPU's memory. Set after the consumer's start, which sets its own.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    logger.info("serving on http://%s:%d", settings.host, settings.port)
    # Each request is logged once, by the service's own summary line (probes at DEBUG); werkzeug's own line would be
    # a second one, with terminal colours in it.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    try:
        app.run(host=settings.host, port=settings.port, threaded=True, debug=False, use_reloader=False)
    except KeyboardInterrupt:
        pass
    finally:
        jobs.queue.stop_consumer()  # running jobs stop at their next page and are queued again
        app.extensions["ocr_service"].close()
    return 0


def _exit_on_signal(signum: int, frame: object) -> None:
    """Turn SIGTERM into the KeyboardInterrupt that stops Flask's server loop."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
