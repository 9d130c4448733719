"""A streaming client for the benchmarks that measure a server on the machine it runs on: it must take as little
of the CPU it measures as it can, since every millisecond it works is one the engine's threads wait for a core.

One request, one connection: the request is written once and the response read by an asyncio protocol (no HTTP
library between the socket and the parser), HTTP/1.1 with chunked transfer encoding as both servers measured
send it. Per SSE event the client does a byte search, and JSON only for the usage event. In `appliance bench
api`'s 16-stream phase (16 x 96 tokens in ~2 s) the client took 0.18 s of CPU through httpx (~115 us a token,
more than the server's 0.12 s) and takes 0.05 s through this (docs/BENCHMARKS.md, 2026-12-08).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any
from urllib.parse import urlsplit

# a chunk whose delta carries text ("content" set to a string that is not empty), and one with the usage (an
# object, not null), in either server's spacing
TEXT_DELTA = re.compile(rb'"content":\s*"[^"]')
USAGE = re.compile(rb'"usage":\s*\{')


def sse_events(buffer: bytearray) -> list[bytes]:
    """Take every complete `data: {...}` line out of `buffer` (what arrived so far of an SSE stream), leaving
    an incomplete last line in it."""
    end = buffer.rfind(b"\n")
    if end < 0:
        return []
    lines = bytes(buffer[:end]).split(b"\n")
    del buffer[:end + 1]
    return [line for line in lines if line.startswith(b"data: {")]


def take_chunks(raw: bytearray, body: bytearray) -> bool:
    """Move every complete chunk of a chunked HTTP body from `raw` (bytes received after the headers) to `body`,
    leaving an incomplete one in `raw`. True once the last (empty) chunk has arrived."""
    while True:
        end = raw.find(b"\r\n")
        if end < 0:
            return False
        size = int(bytes(raw[:end]).split(b";")[0], 16)
        if size == 0:
            return True
        start = end + 2
        if len(raw) < start + size + 2:  # the data and its CRLF
            return False
        body += raw[start:start + size]
        del raw[:start + size + 2]


class StreamedAnswer(asyncio.Protocol):
    """Reads one streamed completion: the arrival time of each SSE event with text, and the completion tokens
    the usage event reports. `done` resolves when the body ends, or fails on a status other than 200, a body
    that is not chunked, or a connection closed early."""

    def __init__(self, started: asyncio.Semaphore | None) -> None:
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.started = started
        self.times: list[float] = []
        self.tokens = 0
        self._raw = bytearray()
        self._body = bytearray()
        self._in_body = False

    def data_received(self, data: bytes) -> None:
        if self.done.done():  # refused, or over: what else arrives is not read
            return
        now = time.perf_counter()
        self._raw += data
        if not self._in_body and not self._read_head():
            return
        finished = take_chunks(self._raw, self._body)
        for event in sse_events(self._body):
            if TEXT_DELTA.search(event):
                self.times.append(now)
                if self.started is not None and len(self.times) == 1:
                    self.started.release()
            if USAGE.search(event):
                self.tokens = json.loads(event.removeprefix(b"data: "))["usage"]["completion_tokens"]
        if finished and not self.done.done():
            self.done.set_result(None)

    def _read_head(self) -> bool:
        """Parse the status line and headers once they are all here; True when the body can be read."""
        end = self._raw.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self._raw[:end]).decode("latin-1")
        del self._raw[:end + 4]
        status = int(head.split(" ", 2)[1])
        if status != 200:
            self._fail(RuntimeError(f"HTTP {status}: {head.splitlines()[0]} {bytes(self._raw[:300])!r}"))
        elif "transfer-encoding: chunked" not in head.lower():
            self._fail(RuntimeError(f"expected a chunked stream, got: {head!r}"))
        else:
            self._in_body = True
        return self._in_body

    def _fail(self, error: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(error)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"the server closed the stream before its end ({exc})"))


async def stream_completion(url: str, path: str, body: dict[str, Any], started: asyncio.Semaphore | None = None
                            ) -> tuple[list[float], int]:
    """POST `body` (a streamed completion) to `url` + `path`: the arrival time of each event with text and the
    completion tokens reported by its usage (ask for it with `stream_options.include_usage`). `started` is
    released at the first text. Cancelling it closes the connection (the server aborts the request)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    payload = json.dumps(body).encode()
    request = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode() + payload
    loop = asyncio.get_running_loop()
    transport, answer = await loop.create_connection(lambda: StreamedAnswer(started), host, port)
    try:
        transport.write(request)
        await answer.done
    finally:
        transport.close()
    return answer.times, answer.tokens
