"""Who may call what: API keys, CORS and rate limits, each off unless configured."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from flask import Flask, Response, request
from flask_cors import CORS
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from werkzeug.middleware.proxy_fix import ProxyFix

from ocr_api import tracking
from ocr_api.errors import Unauthorized
from ocr_api.settings import Settings

# Keys and rate limits apply to every request except those of the probes blueprint (/health, /ready: probes and
# load balancers carry no keys) and of the web blueprint (the page, its files and the API's description: a
# browser loads them without headers; the page sends its key with each API call). A route added anywhere else is
# protected without being named, and so is a path that matches no route (401 before 404).
OPEN_BLUEPRINTS = frozenset({"probes", "web"})
# Open to clients on loopback (a Prometheus beside the service), behind a key for others; never rate-limited.
LOOPBACK_BLUEPRINTS = frozenset({"metrics"})
# RATE_LIMIT counts what makes work: every request but those above and the reads of a job's progress (GET and HEAD
# of this blueprint), which the documented polling loop and the web page make every second or two. A job's pictures,
# which cost a page's rendering each, have a blueprint of their own and count.
PROGRESS_BLUEPRINTS = frozenset({"jobs"})
# Headers that only 429 and 503 answers carry (the rate limiter would add them to every answer).
RETRY_STATUSES = frozenset({429, 503})
LOOPBACK_ADDRESSES = frozenset({"127.0.0.1", "::1"})
API_KEY_HEADERS = ("Authorization: Bearer", "X-API-Key")


def install_access_control(app: Flask, settings: Settings) -> None:
    """Add what the settings ask for, in the order a request meets it: proxy, CORS, key, rate limit."""
    if settings.trusted_proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies)  # type: ignore[method-assign]
    if settings.cors_origin_list:
        origins = "*" if "*" in settings.cors_origin_list else list(settings.cors_origin_list)
        CORS(
            app,
            origins=origins,
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
            methods=["GET", "POST", "DELETE", "OPTIONS"],
            # a page of another origin reads which pages of a searchable PDF carry no text from the model
            expose_headers=["Location", "Retry-After", "X-OCR-Failed-Pages", "X-OCR-Kept-Text-Pages"],
            max_age=600,
        )
    if settings.api_key_list:
        keys = [key.encode() for key in settings.api_key_list]
        app.before_request(lambda: require_api_key(keys))
    # Who the request works for, once its key is checked: the engine's pages are shared fairly between clients.
    identity = client_by_key if settings.api_key_list else client_by_address
    app.before_request(lambda: _name_client(identity))
    if settings.rate_limit:
        # Registered before the limiter, so that it runs after the limiter's own hook (Flask runs them in reverse).
        app.after_request(_retry_after_only_when_refused)
        # With keys on, the key (already checked) names the client; without, a made-up key would be a free
        # new bucket on every request, so the address does.
        Limiter(
            identity,
            app=app,
            # One budget per client for all the work it asks for, whichever route (not one per route).
            application_limits=[settings.rate_limit],
            application_limits_exempt_when=_not_rate_limited,
            storage_uri=settings.rate_limit_storage_uri,
            headers_enabled=True,
            key_prefix="deepseek-ocr",
            # Shared storage down: count in this process meanwhile and log it, rather than answer 500.
            swallow_errors=True,
            in_memory_fallback_enabled=True,
        )


def _name_client(identity: Callable[[], str]) -> None:
    record = tracking.current_record()
    if record is not None:
        record.client = identity()


def _not_rate_limited() -> bool:
    if request.blueprint in OPEN_BLUEPRINTS | LOOPBACK_BLUEPRINTS:
        return True
    return request.blueprint in PROGRESS_BLUEPRINTS and request.method in ("GET", "HEAD")


def _retry_after_only_when_refused(response: Response) -> Response:
    """The rate limiter's Retry-After belongs on a 429 (and our 503s carry their own), not on every answer."""
    if response.status_code not in RETRY_STATUSES:
        response.headers.pop("Retry-After", None)
    return response


def require_api_key(keys: list[bytes]) -> None:
    """Refuse a protected request without a valid key; every key is compared, each in constant time."""
    if request.blueprint in OPEN_BLUEPRINTS or request.method == "OPTIONS":
        return
    if request.blueprint in LOOPBACK_BLUEPRINTS and request.remote_addr in LOOPBACK_ADDRESSES:
        return
    presented = presented_key()
    if presented is None:
        raise Unauthorized(code="missing_api_key")
    # Comparing against all keys (no early exit) keeps the time independent of which key matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented.encode(), key)
    if not matched:
        raise Unauthorized("The API key is not valid.", code="invalid_api_key")


def presented_key() -> str | None:
    """Return the key the request carries (Authorization: Bearer, else X-API-Key), or None."""
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.headers.get("X-API-Key", "").strip() or None


def client_by_key() -> str:
    """Return a digest of the request's (valid) API key: the client a rate limit counts when keys are on."""
    return "key:" + hashlib.sha256((presented_key() or "").encode()).hexdigest()[:32]


def client_by_address() -> str:
    """Return the client's address (after TRUSTED_PROXIES): the client a rate limit counts without keys."""
    return "addr:" + get_remote_address()
