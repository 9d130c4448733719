"""A load generator for the overload test, run in its own process so that it shares nothing with the
server: `python -m tests.security.burst URL KEY N` opens N + N/4 connections, then writes N generation
requests (half chat, half RAG ask) and N/4 `/health` probes, interleaved, one after another on raw sockets
(microseconds apart), and prints `[[route, status, seconds, retry_after], ...]` as JSON. Each latency runs
from its own request's last byte written to its response's last byte read."""

from __future__ import annotations

import json
import selectors
import socket
import sys
import time
from urllib.parse import urlsplit

CHAT = {"messages": [{"role": "user", "content": "Tell me about the planets."}], "max_tokens": 16, "temperature": 0}
ASK = {"question": "How tall is Olympus Mons?", "collection": "space", "k": 1, "max_tokens": 16}


def _request(route: str, host: str, key: str) -> bytes:
    if route == "health":
        return f"GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    path, body = ("/v1/chat/completions", CHAT) if route == "chat" else ("/api/ask", ASK)
    data = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")
    return head.encode() + data


def _status_and_retry(response: bytes) -> tuple[int, str | None]:
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in head[1:] if ": " in line)
    retry = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    return int(head[0].split(" ")[1]), retry


def burst(url: str, key: str, n: int) -> list[tuple[str, int, float, str | None]]:
    address = urlsplit(url)
    assert address.hostname is not None and address.port is not None
    routes = ["health" if i % 5 == 4 else "ask" if i % 2 else "chat" for i in range(n + n // 4)]
    connections = [socket.create_connection((address.hostname, address.port)) for _ in routes]
    selector = selectors.DefaultSelector()
    sent: dict[socket.socket, tuple[str, float]] = {}
    for route, conn in zip(routes, connections, strict=True):
        conn.sendall(_request(route, address.netloc, key))
        sent[conn] = (route, time.perf_counter())
        conn.setblocking(False)
        selector.register(conn, selectors.EVENT_READ, bytearray())
    results = []
    while len(results) < len(routes):
        for ready, _ in selector.select(timeout=600):
            conn, buffer = ready.fileobj, ready.data
            assert isinstance(conn, socket.socket)
            piece = conn.recv(65536)
            if piece:
                buffer += piece
                continue
            route, started = sent[conn]
            status, retry = _status_and_retry(bytes(buffer))
            results.append((route, status, time.perf_counter() - started, retry))
            selector.unregister(conn)
            conn.close()
    return results


if __name__ == "__main__":
    print(json.dumps(burst(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
