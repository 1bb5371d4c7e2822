"""Logging: records with timestamps, and secrets replaced before any log line is written, by any process.

Two kinds of secret are redacted: the values configured (API keys, the engine's key, the Flask secret, a password
in a URI), and whatever stands where a client puts credentials (``?api_key=``, ``Authorization: Bearer``,
``X-API-Key``), since a refused key is still somebody's key. The same filter serves the application's records,
gunicorn's access and error logs (``GunicornLogger``) and nginx's error log (``python -m ocr_api.logs redact``
reads lines on stdin and writes them redacted).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from gunicorn.glogging import Logger as BaseGunicornLogger
from pythonjsonlogger.json import JsonFormatter

from ocr_api.settings import ConfigError, Settings
from ocr_api.tracking import RequestIdFilter

REDACTED = "[redacted]"

# Where clients carry credentials. Each pattern keeps its group 1 (the name) and replaces what follows.
CREDENTIAL_PATTERNS: tuple[re.Pattern[str], ...] = (
    # Query strings and form bodies: ?api_key=..., &token=..., access_token, password, secret, key.
    re.compile(
        r"(?i)((?:^|[?&;\s\"'])(?:api[_-]?key|apikey|key|token|access[_-]?token|secret|password|passwd)=)[^&;\s\"']*"
    ),
    # Authorization headers in any form a log line may quote them: "Authorization: Bearer x", "Bearer x".
    re.compile(r"(?i)(\b(?:bearer|basic)\s+)[^\s\"',;]+"),
    # X-API-Key with a colon, an equals sign or only a space (a malformed header line is quoted as sent).
    re.compile(r"(?i)(\bx-api-key[\"']?\s*[:=]?\s*[\"']?)[^\s\"',;]+"),
)


class RedactSecrets(logging.Filter):
    """Replace configured secrets and credentials in a record's message and traceback with ``[redacted]``."""

    def __init__(self, secrets: Iterable[str] = ()):
        super().__init__()
        # Longest first, so a key that contains another is replaced whole.
        self.secrets = sorted({secret for secret in secrets if secret}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        request_id = getattr(record, "request_id", None)
        if isinstance(request_id, str):  # a client chooses it: it could be anything, a key included
            record.request_id = self.redact(request_id)
        return True

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        for pattern in CREDENTIAL_PATTERNS:
            text = pattern.sub(lambda match: match[1] + REDACTED, text)
        return text


def secrets_of(settings: Settings) -> list[str]:
    """Return the values no log line may contain: keys, the Flask secret, passwords inside URIs."""
    values = [*settings.api_key_list, settings.engine_api_key, settings.secret_key, settings.callback_secret]
    values.append(urlsplit(settings.rate_limit_storage_uri).password or "")
    values.append(urlsplit(settings.redis_url).password or "")
    return [value for value in values if value]


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
JSON_FIELDS = {"asctime": "time", "levelname": "level", "name": "logger"}


def configure_logging(settings: Settings) -> None:
    """Send records to stderr (once per process), as text or JSON lines, through filters that redact secrets and
    name the request each record was written for."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(stream=sys.stderr)
    root.setLevel(settings.log_level)
    for handler in root.handlers:
        handler.setFormatter(formatter_for(settings.log_format))
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())
    _replace_filter(root.handlers, RedactSecrets(secrets_of(settings)))


def formatter_for(log_format: str) -> logging.Formatter:
    """LOG_FORMAT's formatter: a line of text, or one JSON object (time, level, logger, message, request_id and a
    request's summary fields)."""
    if log_format == "json":
        return JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s", rename_fields=JSON_FIELDS)
    return logging.Formatter(TEXT_FORMAT)


class GunicornLogger(BaseGunicornLogger):
    """gunicorn's logger with the redaction filter on its access and error logs (``--logger-class``).

    gunicorn writes the request line (query string included) to the access log, and quotes malformed header
    lines in its error log, before the application ever sees the request.
    """

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        try:
            secrets = secrets_of(Settings.from_env())
        except ConfigError:  # the start script validated the settings already; redact credentials regardless
            secrets = []
        redactor = RedactSecrets(secrets)
        for log in (self.error_log, self.access_log):
            _replace_filter(log.handlers, redactor)


def _replace_filter(handlers: Iterable[logging.Handler], redactor: RedactSecrets) -> None:
    for handler in handlers:
        for old in [f for f in handler.filters if isinstance(f, RedactSecrets)]:
            handler.removeFilter(old)
        handler.addFilter(redactor)


def redact_stream(lines: Iterable[str], out: Any, redactor: RedactSecrets) -> None:
    """Copy lines to ``out`` redacted, flushing each: another process's log (nginx's) passes through here."""
    for line in lines:
        out.write(redactor.redact(line))
        out.flush()


def main(argv: list[str]) -> int:
    """``python -m ocr_api.logs redact``: stdin to stdout, every line redacted."""
    if argv != ["redact"]:
        print("usage: python -m ocr_api.logs redact", file=sys.stderr)
        return 2
    try:
        secrets = secrets_of(Settings.from_env())
    except ConfigError:
        secrets = []
    redact_stream(sys.stdin, sys.stdout, RedactSecrets(secrets))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
