"""A job's callback: one signed POST to the client's URL when the job ends, never to an address inside our network.

The URL's host is resolved once and every address it resolves to must be public (unless CALLBACK_ALLOW_PRIVATE);
the connection then goes to that checked address (with the name kept for the Host header and TLS), so a DNS
answer that changes between the check and the call (rebinding) cannot point it inward. Redirects are not
followed: a redirect could point anywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import urllib3

from ocr_api.errors import BadRequest

SIGNATURE_HEADER = "X-OCR-Signature"  # "t=<unix time>,v1=<hex HMAC-SHA256 of '<t>.<body>'>"
TIMEOUT_S = 10.0
MAX_URL_CHARS = 2048


class CallbackRefused(BadRequest):
    code = "callback_url_refused"


@dataclass(frozen=True)
class Target:
    """A checked callback URL: where to connect (a public address) and what to ask for there."""

    scheme: str
    host: str
    address: str
    port: int
    path: str


def check_url(url: str, allow_private: bool) -> Target:
    """Parse and resolve a callback URL; raise CallbackRefused (400) when it may not be called."""
    if len(url) > MAX_URL_CHARS:
        raise CallbackRefused(f"callback_url is longer than {MAX_URL_CHARS} characters.")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CallbackRefused("callback_url must be an http:// or https:// URL with a host.")
    if parts.username or parts.password:
        raise CallbackRefused("callback_url may not carry a user name or password.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        found = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError):
        raise CallbackRefused(f"callback_url's host {parts.hostname!r} does not resolve.") from None
    addresses = [ipaddress.ip_address(entry[4][0]) for entry in found]
    inward = [address for address in addresses if not address.is_global]
    if inward and not allow_private:
        raise CallbackRefused(
            f"callback_url's host resolves to {inward[0]}, a loopback, private, link-local or reserved address; "
            "only public addresses are called (CALLBACK_ALLOW_PRIVATE=true allows others)."
        )
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, parts.hostname, str(addresses[0]), port, path)


def sign(secret: str, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: str, body: bytes, header: str, tolerance_s: float = 300) -> bool:
    """What a receiver does with the signature header: check the HMAC and that it is recent."""
    fields = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    expected = sign(secret, body, timestamp)
    return hmac.compare_digest(expected, header) and abs(time.time() - timestamp) <= tolerance_s


def post(url: str, payload: dict[str, Any], secret: str, allow_private: bool) -> int:
    """POST the payload, signed, to the checked address; return the status. Raises on refusal or network errors."""
    target = check_url(url, allow_private)  # again: the name may resolve elsewhere now
    body = json.dumps(payload).encode()
    headers = {
        "Host": target.host if target.port in (80, 443) else f"{target.host}:{target.port}",
        "Content-Type": "application/json",
        "User-Agent": "deepseek-ocr-api",
        SIGNATURE_HEADER: sign(secret, body, int(time.time())),
    }
    timeout = urllib3.Timeout(total=TIMEOUT_S)
    if target.scheme == "https":
        pool: urllib3.HTTPConnectionPool = urllib3.HTTPSConnectionPool(
            target.address, target.port, server_hostname=target.host, assert_hostname=target.host, timeout=timeout
        )
    else:
        pool = urllib3.HTTPConnectionPool(target.address, target.port, timeout=timeout)
    with pool:
        response = pool.request("POST", target.path, body=body, headers=headers, redirect=False, retries=False)
    return response.status
