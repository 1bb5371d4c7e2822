"""Telling, while a request runs, whether its client is still connected (so its work can stop when it is not)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

# Where the WSGI servers this service runs under put the client's socket in the environ.
SOCKET_KEYS = ("gunicorn.socket", "werkzeug.socket")


def client_gone_probe(environ: dict[str, Any]) -> Callable[[], bool]:
    """Return a check that answers True once the client has closed its connection.

    The request's body has been read in full by then, so the socket is readable only when the peer sent its end
    of stream (or, rarely, pipelines its next request: that is data, so the client is still there). Behind
    nginx the peer is nginx, which closes its connection to the worker when its own client hangs up.
    """
    sock = next((environ[key] for key in SOCKET_KEYS if environ.get(key) is not None), None)
    if not isinstance(sock, socket.socket):
        return lambda: False

    def gone() -> bool:
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False  # nothing to read: still connected
        except OSError:
            return True  # reset, or closed under us

    return gone
