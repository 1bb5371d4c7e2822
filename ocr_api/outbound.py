"""Calls the service makes to URLs its clients name (a job's callback, an image to fetch), never into our network.

A URL's host is resolved once and every address it resolves to must be public (unless the caller allows private
ones); the connection then goes to that checked address, with the name kept for the Host header and TLS, so a DNS
answer that changes between the check and the call (rebinding) cannot point it inward. Redirects are never
followed blindly: ``fetch`` checks each hop as it checked the first, and a callback follows none.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import urllib3

from ocr_api.errors import ApiError, BadRequest, PayloadTooLarge

MAX_URL_CHARS = 2048
MAX_REDIRECTS = 5
READ_CHUNK = 64 * 1024


class UrlRefused(BadRequest):
    """The URL may not be called: not http(s), no host, credentials inside, or an address inside our network."""

    code = "image_url_refused"  # a callback_url refused is CallbackRefused (ocr_api/jobs/callbacks.py)


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (an allowed address) and what to ask for there."""

    scheme: str
    host: str
    address: str
    port: int
    path: str

    @property
    def host_header(self) -> str:
        return self.host if self.port in (80, 443) else f"{self.host}:{self.port}"

    def pool(self, timeout: urllib3.Timeout) -> urllib3.HTTPConnectionPool:
        """A connection pool to the checked address, TLS checked against the URL's host name."""
        if self.scheme == "https":
            return urllib3.HTTPSConnectionPool(
                self.address, self.port, server_hostname=self.host, assert_hostname=self.host, timeout=timeout
            )
        return urllib3.HTTPConnectionPool(self.address, self.port, timeout=timeout)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def check_url(
    url: str,
    allow_private: bool,
    *,
    allowed_networks: tuple[Network, ...] = (),
    what: str = "The URL",
    refused: type[ApiError] = UrlRefused,
) -> Target:
    """Parse and resolve ``url``; raise ``refused`` (a 400) when it may not be called.

    Every address the host resolves to must be public, or inside ``allowed_networks``, unless ``allow_private``.
    """
    if len(url) > MAX_URL_CHARS:
        raise refused(f"{what} is longer than {MAX_URL_CHARS} characters.")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise refused(f"{what} must be an http:// or https:// URL with a host.")
    if parts.username or parts.password:
        raise refused(f"{what} may not carry a user name or password.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        found = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError):
        raise refused(f"{what}'s host {parts.hostname[:100]!r} does not resolve.") from None
    addresses = [ipaddress.ip_address(entry[4][0].split("%", 1)[0]) for entry in found]
    # An allowed network names addresses as written: an IPv6 form of an address inside it is not let in with it.
    inward = [
        address
        for address in addresses
        if not is_public(address) and not any(address in network for network in allowed_networks)
    ]
    if inward and not allow_private:
        raise refused(
            f"{what}'s host resolves to {inward[0]}, a loopback, private, link-local or reserved address; only "
            "public addresses are called."
        )
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, parts.hostname, str(addresses[0]), port, path)


# IPv6 prefixes that carry an IPv4 address in their last 32 bits, which a translator or tunnel on the way may reach:
# NAT64's well-known prefix (RFC 6052) and the deprecated IPv4-compatible and IPv4-translated forms. The IPv4-mapped
# (::ffff:0:0/96) and 6to4 (2002::/16) forms have ipaddress' own accessors.
EMBEDDING_IPV4 = tuple(ipaddress.ip_network(prefix) for prefix in ("64:ff9b::/96", "::/96", "::ffff:0:0:0/96"))
# IPv6 prefixes refused outright: NAT64's local-use prefix (RFC 8215, where the IPv4 address may sit at any of several
# places) and the deprecated site-local range, both internal by definition; ipaddress counts them global.
INTERNAL_IPV6 = tuple(ipaddress.ip_network(prefix) for prefix in ("64:ff9b:1::/48", "fec0::/10"))


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True when ``address`` is public, its embedded IPv4 address too where it carries one.

    ``is_global`` is False for loopback, private, link-local (the cloud metadata address 169.254.169.254 among them),
    shared, reserved and documentation ranges, in IPv4 and IPv6 alike; but it counts NAT64, 6to4, IPv4-compatible and
    site-local IPv6 addresses public, and through a translator on the way they reach the IPv4 address inside them.
    """
    if address.version == 6 and any(address in network for network in INTERNAL_IPV6):
        return False
    return all(form.is_global for form in _forms(address))


def _forms(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The address, and the IPv4 address an IPv6 one embeds where it embeds one."""
    if address.version == 4:
        return [address]
    assert isinstance(address, ipaddress.IPv6Address)
    embedded = address.ipv4_mapped or address.sixtofour
    if embedded is None and any(address in network for network in EMBEDDING_IPV4) and int(address) & 0xFFFFFFFF:
        embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return [address] if embedded is None else [address, embedded]


class FetchFailed(BadRequest):
    code = "image_url_fetch_failed"


class FetchTooLarge(PayloadTooLarge):
    code = "image_url_too_large"


class FetchTimeout(BadRequest):
    code = "image_url_timeout"


@dataclass(frozen=True)
class FetchLimits:
    """How far ``fetch`` goes: the most bytes, the most seconds in all, the inside networks it may reach."""

    max_bytes: int
    timeout_s: float
    allowed_networks: tuple[Network, ...] = ()  # not public, but allowed (IMAGE_URL_ALLOWED_NETWORKS)


def fetch(url: str, limits: FetchLimits, *, what: str = "The image URL") -> bytes:
    """GET ``url`` and return its body; every redirect's target is checked as the first URL was.

    Raises UrlRefused (a target inside our network, a scheme other than http and https), FetchTooLarge (the body
    passes ``max_bytes``, declared or counted), FetchTimeout (the whole exchange passes ``timeout_s``) or
    FetchFailed (unreachable, not 200, too many redirects).
    """
    deadline = time.monotonic() + limits.timeout_s
    for _ in range(MAX_REDIRECTS + 1):
        target = check_url(url, False, allowed_networks=limits.allowed_networks, what=what)
        left = deadline - time.monotonic()
        if left <= 0:
            raise FetchTimeout(f"{what} did not answer within {limits.timeout_s:g} s.")
        headers = {"Host": target.host_header, "User-Agent": "deepseek-ocr-api", "Accept": "image/*,application/pdf"}
        try:
            with target.pool(urllib3.Timeout(total=left)) as pool:
                response = pool.request(
                    "GET", target.path, headers=headers, redirect=False, retries=False, preload_content=False
                )
                try:
                    if response.status in (301, 302, 303, 307, 308) and response.headers.get("Location"):
                        url = urljoin(url, response.headers["Location"])
                        continue
                    if response.status != 200:
                        raise FetchFailed(f"{what} answered HTTP {response.status}, not 200.")
                    return _read_bounded(response, limits, deadline, what)
                finally:
                    response.close()  # the pool is this fetch's alone: nothing to keep the connection for
        except (urllib3.exceptions.TimeoutError, TimeoutError):
            raise FetchTimeout(f"{what} did not answer within {limits.timeout_s:g} s.") from None
        except urllib3.exceptions.HTTPError as exc:
            raise FetchFailed(f"{what} could not be fetched: {type(exc).__name__}.") from None
    raise FetchFailed(f"{what} redirected more than {MAX_REDIRECTS} times.")


def _read_bounded(response: urllib3.BaseHTTPResponse, limits: FetchLimits, deadline: float, what: str) -> bytes:
    declared = response.headers.get("Content-Length", "")
    too_large = FetchTooLarge(f"{what}'s body is larger than the upload limit of {limits.max_bytes} bytes.")
    if declared.isascii() and declared.isdigit() and int(declared) > limits.max_bytes:
        raise too_large
    chunks, size = [], 0
    while chunk := response.read1(READ_CHUNK):  # what one read brings: a trickle cannot hold a read open
        size += len(chunk)
        if size > limits.max_bytes:
            raise too_large
        if time.monotonic() > deadline:  # a server that trickles its body stays within each read's timeout
            raise FetchTimeout(f"{what} did not answer within {limits.timeout_s:g} s.")
        chunks.append(chunk)
    return b"".join(chunks)
