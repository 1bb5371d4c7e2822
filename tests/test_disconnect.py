"""Telling whether a request's client is still there, from the socket the WSGI server hands the application."""

from __future__ import annotations

import socket

from ocr_api.http.disconnect import client_gone_probe


def test_the_probe_sees_a_connected_client_pipelined_data_and_a_hang_up():
    ours, client = socket.socketpair()
    try:
        gone = client_gone_probe({"gunicorn.socket": ours})
        assert gone() is False  # connected, nothing to read
        client.sendall(b"GET /next HTTP/1.1\r\n")  # a pipelined request is data: still there
        assert gone() is False
        assert ours.recv(100).startswith(b"GET /next")  # the peek consumed nothing
        client.close()
        assert gone() is True
    finally:
        ours.close()


def test_the_probe_takes_werkzeugs_socket_and_answers_false_without_one():
    ours, client = socket.socketpair()
    try:
        gone = client_gone_probe({"werkzeug.socket": ours})
        client.shutdown(socket.SHUT_WR)
        assert gone() is True
    finally:
        ours.close()
        client.close()
    assert client_gone_probe({})() is False  # a test client, or a server that hands no socket
    assert client_gone_probe({"gunicorn.socket": object()})() is False
