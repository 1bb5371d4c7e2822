"""Logging: records to stderr with timestamps, and configured secrets replaced before anything is written."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from urllib.parse import urlsplit

from config import Settings

REDACTED = "[redacted]"


class RedactSecrets(logging.Filter):
    """Replace every configured secret in a record's message and traceback with ``[redacted]``."""

    def __init__(self, secrets: Iterable[str]):
        super().__init__()
        # Longest first, so a key that contains another is replaced whole.
        self.secrets = sorted({secret for secret in secrets if secret}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text


def secrets_of(settings: Settings) -> list[str]:
    """Return the values no log line may contain: keys, the Flask secret, passwords inside URIs."""
    values = [*settings.api_key_list, settings.engine_api_key, settings.secret_key]
    values.append(urlsplit(settings.rate_limit_storage_uri).password or "")
    return [value for value in values if value]


def configure_logging(settings: Settings) -> None:
    """Send records to stderr with timestamps (once per process) through a filter that redacts secrets."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    root.setLevel(settings.log_level)
    redactor = RedactSecrets(secrets_of(settings))
    for handler in root.handlers:
        for old in [f for f in handler.filters if isinstance(f, RedactSecrets)]:
            handler.removeFilter(old)
        handler.addFilter(redactor)
