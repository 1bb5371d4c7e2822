"""The front server's configuration: deploy/nginx.conf.template filled in from the service's settings.

``./start_production.sh`` runs nginx in front of gunicorn so that slow clients are buffered by nginx, never by a
worker thread. ``python -m ocr_api.front_server --listen HOST:PORT --upstream unix:SOCK --run-dir D --log-dir L``
prints the configuration, or one ``error:`` line and exit status 1 on bad settings.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from ocr_api.settings import ConfigError, Settings

TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "nginx.conf.template"
_PLACEHOLDER = re.compile(r"\{\{([a-z_]+)\}\}")


def render(settings: Settings, listen: str, upstream: str, run_dir: str, log_dir: str) -> str:
    """Return the nginx configuration for these settings and paths."""
    values = {
        "listen": listen,
        "upstream": upstream,
        "run_dir": run_dir,
        "log_dir": log_dir,
        "max_body_bytes": str(settings.max_content_length),
        "max_upload_mb": str(settings.max_upload_mb),
        "job_max_body_bytes": str(settings.job_max_upload_mb * 1024 * 1024),
        "job_max_upload_mb": str(settings.job_max_upload_mb),
        "client_timeout_s": f"{settings.client_timeout_s:g}",
        "read_timeout_s": str(settings.longest_request_s),
        # nginx started by root would run its workers as nobody, who cannot reach the run directory; they run
        # as the user who starts it, as they do for an unprivileged user (the documented deployment).
        "user_directive": "user root;" if os.geteuid() == 0 else "",
    }

    def fill(match: re.Match[str]) -> str:
        return values[match[1]]  # a placeholder without a value is a bug in the template: KeyError

    return _PLACEHOLDER.sub(fill, TEMPLATE.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT the clients connect to")
    parser.add_argument("--upstream", required=True, help="where gunicorn listens, e.g. unix:/run/ocr/gunicorn.sock")
    parser.add_argument("--run-dir", required=True, help="pid file and nginx's temporary files")
    parser.add_argument("--log-dir", required=True, help="where the access log goes")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(render(settings, args.listen, args.upstream, args.run_dir, args.log_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
