"""A job's callback: one signed POST to the client's URL when the job ends, never to an address inside our network.

The URL is checked by ocr_api/outbound.py (resolved once, every address public unless CALLBACK_ALLOW_PRIVATE, the
connection made to the checked address); redirects are not followed: a redirect could point anywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import urllib3

from ocr_api import outbound
from ocr_api.outbound import Target, UrlRefused

SIGNATURE_HEADER = "X-OCR-Signature"  # "t=<unix time>,v1=<hex HMAC-SHA256 of '<t>.<body>'>"
TIMEOUT_S = 10.0


class CallbackRefused(UrlRefused):
    code = "callback_url_refused"


def check_url(url: str, allow_private: bool) -> Target:
    """Parse and resolve a callback URL; raise CallbackRefused (400) when it may not be called."""
    return outbound.check_url(url, allow_private, what="callback_url", refused=CallbackRefused)


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
        "Host": target.host_header,
        "Content-Type": "application/json",
        "User-Agent": "deepseek-ocr-api",
        SIGNATURE_HEADER: sign(secret, body, int(time.time())),
    }
    with target.pool(urllib3.Timeout(total=TIMEOUT_S)) as pool:
        response = pool.request("POST", target.path, body=body, headers=headers, redirect=False, retries=False)
    return response.status
