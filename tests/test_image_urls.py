"""http(s) image URLs in chat completions: off by default; when on, fetched only from allowed addresses, checked
again on every redirect, within a size and a time cap. The images come from a loopback server of the test's own,
which the tests allow explicitly (IMAGE_URL_ALLOWED_NETWORKS=127.0.0.1/32); every other inside address stays
refused."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from ocr_api import outbound
from ocr_dev.inputs import png_bytes

BIG = 2 << 20  # over the 1 MiB upload limit these tests set


class ImageHost(BaseHTTPRequestHandler):
    """Serves an image, redirects, and the ways a remote host can misbehave."""

    protocol_version = "HTTP/1.1"
    served: list[str] = []  # noqa: RUF012 - shared on purpose: the paths asked for, in order

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        ImageHost.served.append(self.path)
        parts = urlsplit(self.path)
        if parts.path == "/image.png":
            self._send(200, png_bytes((70, 50)), "image/png")
        elif parts.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", parse_qs(parts.query)["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif parts.path == "/big":
            self._send(200, b"\0" * BIG, "image/png")
        elif parts.path == "/big-undeclared":  # no Content-Length: the body ends when the connection does
            self.protocol_version = "HTTP/1.0"
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(b"\0" * BIG)
            self.close_connection = True
        elif parts.path == "/slow":
            time.sleep(3)
            self._send(200, png_bytes(), "image/png")
        elif parts.path == "/trickle":  # answers at once, then a byte every 0.2 s: no single read times out
            body = png_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for byte in body[:20]:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.2)
        else:
            self._send(404, b"not here", "text/plain")

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def image_host() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ImageHost)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def fetching(make_client):
    """A service that fetches image URLs, from public addresses and its own loopback image host only."""
    return make_client(
        image_url_fetch=True, image_url_allowed_networks="127.0.0.1/32", max_upload_mb=1, image_url_timeout_s=1.0
    )


def _chat(client, url: str):
    body = {
        "model": "deepseek-ocr",
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}],
    }
    response = client.post("/v1/chat/completions", json=body)
    return response.status_code, response.get_json()


def _code(answer) -> tuple[int, str]:
    status, body = answer
    return status, body["error"]["code"]


def test_fetching_is_off_by_default(client, image_host):
    ImageHost.served.clear()
    assert _code(_chat(client, f"{image_host}/image.png")) == (400, "image_url_fetch_disabled")
    assert ImageHost.served == []  # not even asked


def test_an_allowed_image_is_fetched_and_read(fetching, image_host, fake_engine):
    status, body = _chat(fetching, f"{image_host}/image.png")
    assert status == 200, body
    assert body["choices"][0]["message"]["content"].endswith("image 70x50")
    assert fake_engine.requests[-1].image.size == (70, 50)


def test_a_private_target_is_refused_without_being_asked(make_client, image_host):
    ImageHost.served.clear()
    public_only = make_client(image_url_fetch=True)
    status, body = _chat(public_only, f"{image_host}/image.png")
    assert (status, body["error"]["code"]) == (400, "image_url_refused")
    assert "127.0.0.1" in body["error"]["message"]
    assert ImageHost.served == []


@pytest.mark.parametrize("inward", ["http://169.254.169.254/latest/meta-data/", "http://10.1.2.3/a.png",
                                    "http://[::1]:8080/a.png", "http://127.0.0.2/a.png"])  # fmt: skip
def test_a_redirect_to_an_inside_address_is_refused_before_it_is_followed(fetching, image_host, inward):
    ImageHost.served.clear()
    status, body = _chat(fetching, f"{image_host}/redirect?to={inward}")
    assert (status, body["error"]["code"]) == (400, "image_url_refused")
    assert len(ImageHost.served) == 1  # the redirect, and not its target
    assert ImageHost.served[0].startswith("/redirect?to=")


def test_a_redirect_to_an_allowed_address_is_followed(fetching, image_host):
    status, body = _chat(fetching, f"{image_host}/redirect?to=/image.png")
    assert status == 200, body


def test_the_size_cap_holds_declared_or_not(fetching, image_host):
    assert _code(_chat(fetching, f"{image_host}/big")) == (413, "image_url_too_large")
    assert _code(_chat(fetching, f"{image_host}/big-undeclared")) == (413, "image_url_too_large")


def test_the_time_cap_holds_for_a_slow_answer_and_a_trickled_body(fetching, image_host):
    assert _code(_chat(fetching, f"{image_host}/slow")) == (400, "image_url_timeout")
    assert _code(_chat(fetching, f"{image_host}/trickle")) == (400, "image_url_timeout")


def test_an_answer_other_than_200_is_a_clear_400(fetching, image_host):
    status, body = _chat(fetching, f"{image_host}/missing.png")
    assert (status, body["error"]["code"]) == (400, "image_url_fetch_failed")
    assert "404" in body["error"]["message"]


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.png", "gopher://x/"])
def test_only_http_and_https_are_taken(fetching, url):
    assert _code(_chat(fetching, url)) == (400, "invalid_image_url")


def test_redirects_to_other_schemes_are_refused(fetching, image_host):
    assert _code(_chat(fetching, f"{image_host}/redirect?to=file:///etc/passwd")) == (400, "image_url_refused")


def test_check_url_refuses_every_kind_of_inside_address():
    loopback = ipaddress.ip_network("127.0.0.1/32")
    for url in ("http://169.254.169.254/", "http://[fd00:ec2::254]/", "http://192.168.0.1/", "http://[::1]/",
                "http://100.64.0.1/", "http://0.0.0.0/"):  # fmt: skip
        with pytest.raises(outbound.UrlRefused):
            outbound.check_url(url, False, allowed_networks=(loopback,))
    target = outbound.check_url("http://127.0.0.1:8080/a.png?x=1", False, allowed_networks=(loopback,))
    assert (target.address, target.port, target.path, target.host_header) == ("127.0.0.1", 8080, "/a.png?x=1",
                                                                              "127.0.0.1:8080")  # fmt: skip


# IPv6 forms that carry an internal IPv4 address (NAT64, 6to4, IPv4-compatible) or are internal by definition
# (NAT64 local-use, site-local): ipaddress counts them global, and a translator on the way reaches what they carry.
EMBEDDED_INSIDE = [
    "http://[64:ff9b::7f00:1]/a.png", "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/", "http://[64:ff9b:1::a00:1]/a.png",
    "http://[2002:7f00:1::1]/a.png", "http://[::7f00:1]/a.png", "http://[fec0::1]/a.png",
    "http://[::ffff:127.0.0.1]/a.png", "http://[::ffff:0:a00:1]/a.png",
]  # fmt: skip


@pytest.mark.parametrize("url", EMBEDDED_INSIDE)
def test_ipv6_forms_of_inside_addresses_are_refused_for_images_and_callbacks(url):
    from ocr_api.jobs import callbacks

    with pytest.raises(outbound.UrlRefused, match="only public addresses"):
        outbound.check_url(url, False)
    with pytest.raises(callbacks.CallbackRefused):
        callbacks.check_url(url, allow_private=False)


@pytest.mark.parametrize("url", ["http://[64:ff9b::808:808]/a.png", "http://[2002:808:808::1]/a.png"])
def test_ipv6_forms_of_public_addresses_stay_allowed(url):
    assert outbound.check_url(url, False).address.startswith(("64:ff9b::", "2002:"))


@pytest.mark.parametrize("inward", EMBEDDED_INSIDE[:3])
def test_a_redirect_to_an_ipv6_form_of_an_inside_address_is_refused(fetching, image_host, inward):
    ImageHost.served.clear()
    status, body = _chat(fetching, f"{image_host}/redirect?to={inward}")
    assert (status, body["error"]["code"]) == (400, "image_url_refused")
    assert len(ImageHost.served) == 1  # the redirect, and not its target
