"""The full-load phase's probe speaks HTTP/1.1 on one kept-alive socket: it must read whole responses however
the server's bytes arrive, one after another on the same connection."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from appliance.bench.api_probes import http_request, pooled_load_figures, probe_requests


def _serve(replies: list[list[bytes]]) -> tuple[int, threading.Thread]:
    """A one-connection server on a free port: for each request it reads, it sends the next reply's pieces
    (separately, so the probe sees them split), then closes."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def run() -> None:
        with listener, listener.accept()[0] as conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for pieces in replies:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                for piece in pieces:
                    conn.sendall(piece)
                    threading.Event().wait(0.01)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return port, thread


@pytest.fixture
def connect() -> Iterator:
    opened: list[socket.socket] = []

    def open_to(port: int) -> socket.socket:
        opened.append(socket.create_connection(("127.0.0.1", port)))
        return opened[-1]

    yield open_to
    for sock in opened:
        sock.close()


def test_responses_split_anywhere_are_read_whole_one_after_another(connect) -> None:
    body = b'{"error": {"type": "overloaded"}}'
    refused = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: %d\r\nretry-after: 1\r\n\r\n" % len(body) + body
    port, _ = _serve([
        [b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n", b"\r\n", b'{"status":', b'"ok"}'],
        [refused[:40], refused[40:-5], refused[-5:]],
        [b"HTTP/1.1 204 No Content\r\n\r\n"],  # no body at all
    ])
    sock = connect(port)
    health, refusal = probe_requests(f"http://127.0.0.1:{port}")
    assert http_request(sock, health) == 200
    assert http_request(sock, refusal) == 503  # had the first body been left unread, this would read it
    assert http_request(sock, health) == 204


def test_a_server_that_closes_mid_response_is_an_error(connect) -> None:
    port, _ = _serve([[b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part"]])
    with pytest.raises(ConnectionError):
        http_request(connect(port), probe_requests(f"http://127.0.0.1:{port}")[0])


def test_the_refused_request_is_a_complete_json_post() -> None:
    _, refused = probe_requests("http://127.0.0.1:8123")
    head, _, body = refused.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8123\r\n")
    assert f"Content-Length: {len(body)}".encode() in head


def test_rounds_pool_their_probes_for_the_percentiles() -> None:
    def load(outlier: float | None, seconds: float) -> dict:
        health = [1.0] * 99 + ([outlier] if outlier else [1.0])
        return {"health_ms": health, "refusal_ms": [2.0] * 49 + [outlier or 2.0], "long_prompt_s": seconds,
                "long_prompt_tokens": 2000}

    pooled = pooled_load_figures([load(50.0, 2.0), load(40.0, 3.0), load(None, 2.5)])
    # two slow probes in 300 are under the 1% tail; a median of each round's p99 would say ~40 ms
    assert pooled["health_p99_ms"] < 2.0 and pooled["probes"] == 300 and pooled["refusals"] == 150
    assert pooled["health_p50_ms"] == 1.0 and pooled["refusal_p50_ms"] == 2.0
    assert pooled["long_prompt_s"] == 2.5  # the median round
