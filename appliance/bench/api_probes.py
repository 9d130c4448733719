"""`appliance bench api`'s full-load phase: does the server answer `/health` and refuse requests at once while
the engine works as hard as it can?

Each phase: 16 streams decoding, then a ~2k-token prompt arriving (prefilled in chunks beside their decode
steps); from a process of its own, a probe GETs `/health` every 50 ms and, every 100 ms halfway between two of
them, sends a request that the full queue must refuse (503), until the long prompt is answered: each request
arrives on its own, as a health check and an overflowing client's request would, not right behind another.
`LOAD_PHASES` phases per round, each with a prompt of its own (the prefix cache must not skip its prefill), pool
their probes, and the report pools every round's: ~20 `/health` probes a phase are too few for a p99 that is
more than the slowest one.

The probe talks HTTP/1.1 over one kept-alive socket, as a load balancer's health check does, rather than
through a Python HTTP client: on a machine whose cores the engine keeps busy, httpx's own work (~0.4 ms of CPU
a request) waited for a core too and added ~2 ms to the median, measuring the client more than the server.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import socket
import statistics
import time
from collections.abc import Callable, Coroutine
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any
from urllib.parse import urlsplit

import httpx

from appliance.bench.itl import percentile

LOAD_PHASES = 6
LOAD_STREAM_TOKENS = 512  # the load phase's streams outlast the long prompt (and are cancelled once it is answered)
PROBE_EVERY_S = 0.05
StreamRequest = Callable[[str, str, int, asyncio.Semaphore], Coroutine[Any, Any, tuple[list[float], int]]]
REFUSED_BODY = json.dumps({"messages": [{"role": "user", "content": "Write about nothing."}], "max_tokens": 4})


def http_request(sock: socket.socket, request: bytes) -> int:
    """Send one HTTP/1.1 request on a kept-alive connection and read its whole response (headers, then a
    body of Content-Length bytes); its status code. Raises ConnectionError if the server closes first."""
    sock.sendall(request)
    data = b""
    while (end := data.find(b"\r\n\r\n")) < 0:
        data += _received(sock)
    head = data[:end].decode("latin-1").split("\r\n")
    length = next((int(line.split(":", 1)[1]) for line in head[1:]
                   if line.lower().startswith("content-length:")), 0)
    body = len(data) - (end + 4)
    while body < length:
        body += len(_received(sock))
    return int(head[0].split(" ", 2)[1])


def _received(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise ConnectionError("the server closed the connection mid-response")
    return chunk


def probe_requests(url: str) -> tuple[bytes, bytes]:
    """The raw GET /health and the chat request the full queue refuses, for the server at `url`."""
    host = urlsplit(url).netloc
    health = f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    refused = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(REFUSED_BODY)}\r\n\r\n{REFUSED_BODY}").encode()
    return health, refused


def probe(url: str, go: Event, stop: Event, results: Connection) -> None:
    """A probe process: once `go` is set and until `stop` is, GET /health every 50 ms and, every 100 ms halfway
    between two of them, a request the full queue must refuse; sends back (health ms, refusal ms, unexpected
    statuses)."""
    health_request, refused_request = probe_requests(url)
    parts = urlsplit(url)
    health: list[float] = []
    refusals: list[float] = []
    unexpected: list[int] = []
    go.wait()
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tick = 0  # a tick every 25 ms: /health on even ticks, a refusal on every other odd one
        while not stop.is_set():
            if tick % 2 == 0:
                started = time.perf_counter()
                status = http_request(sock, health_request)
                health.append((time.perf_counter() - started) * 1000)
                if status != 200:
                    unexpected.append(status)
            elif tick % 4 == 1:
                started = time.perf_counter()
                status = http_request(sock, refused_request)
                if stop.is_set():  # the long prompt was answered meanwhile: the queue may have had room
                    break
                refusals.append((time.perf_counter() - started) * 1000)
                if status != 503:  # the queue is full: anything else means the phase is not what it says
                    unexpected.append(status)
            tick += 1
            time.sleep(PROBE_EVERY_S / 2)
    results.send((health, refusals, unexpected))


async def full_load(client: httpx.AsyncClient, long_prompt: str, stream: StreamRequest, topics: tuple[str, ...]
                    ) -> dict[str, Any]:
    """`LOAD_PHASES` full-load phases (each `_load_phase`) with their probes pooled. `stream(url, topic,
    max_tokens, started)` is the client's streamed request."""
    health: list[float] = []
    refusals: list[float] = []
    seconds: list[float] = []
    tokens = 0
    for phase in range(LOAD_PHASES):
        prompt = f"Part {phase + 1}. {long_prompt}"  # its own first tokens: nothing of it is in the prefix cache
        figures = await _load_phase(client, prompt, stream, topics)
        health += figures["health"]
        refusals += figures["refusals"]
        seconds.append(figures["long_prompt_s"])
        tokens = figures["long_prompt_tokens"]
    return {**probe_figures(health, refusals), "health_ms": health, "refusal_ms": refusals,
            "long_prompt_s": statistics.median(seconds), "long_prompt_tokens": tokens}


def probe_figures(health: list[float], refusals: list[float]) -> dict[str, float]:
    """p50 and p99 of the probes' times (ms), and how many there were."""
    return {"health_p50_ms": percentile(health, 0.5), "health_p99_ms": percentile(health, 0.99),
            "refusal_p50_ms": percentile(refusals, 0.5), "refusal_p99_ms": percentile(refusals, 0.99),
            "probes": len(health), "refusals": len(refusals)}


def pooled_load_figures(loads: list[dict[str, Any]]) -> dict[str, float]:
    """The full-load figures of several rounds: percentiles over every round's probes together (a median of
    per-round p99s would be a median of near-maxima), the long prompt's median time."""
    return {**probe_figures([ms for load in loads for ms in load["health_ms"]],
                            [ms for load in loads for ms in load["refusal_ms"]]),
            "long_prompt_s": statistics.median(load["long_prompt_s"] for load in loads),
            "long_prompt_tokens": loads[0]["long_prompt_tokens"]}


async def _load_phase(client: httpx.AsyncClient, long_prompt: str, stream: StreamRequest, topics: tuple[str, ...]
                      ) -> dict[str, Any]:
    """16 streams; once each has its first token the long prompt arrives, and the probe process runs until it is
    answered; then the streams are dropped (the server aborts them)."""
    context = multiprocessing.get_context("spawn")
    go, stop = context.Event(), context.Event()
    receive, send = context.Pipe(duplex=False)
    prober = context.Process(target=probe, args=(str(client.base_url), go, stop, send), daemon=True)
    prober.start()  # started (and imported) before the load, so it probes from the first moment
    send.close()  # the child's end: a prober that dies makes `recv` raise instead of wait for ever
    started = asyncio.Semaphore(0)
    streams = [asyncio.create_task(stream(str(client.base_url), t, LOAD_STREAM_TOKENS, started)) for t in topics]
    for _ in topics:
        await started.acquire()
    sent = time.perf_counter()
    long = asyncio.create_task(client.post("/v1/completions", json={"prompt": long_prompt, "max_tokens": 1}))
    await asyncio.sleep(0.5)  # the long prompt admitted (tokenized, queued): from here on the queue is full
    go.set()
    await asyncio.wait([long])
    stop.set()
    health, refusals, unexpected = await asyncio.to_thread(receive.recv)
    prober.join()
    if unexpected:
        raise RuntimeError(f"probes expected /health 200 and refusals 503, got {sorted(set(unexpected))}")
    reply = await long
    reply.raise_for_status()
    long_s = time.perf_counter() - sent
    if any(s.done() for s in streams):  # the queue was not full all along
        raise RuntimeError("a load stream ended before the long prompt was answered")
    for s in streams:
        s.cancel()
    await asyncio.gather(*streams, return_exceptions=True)
    return {"health": health, "refusals": refusals, "long_prompt_s": long_s,
            "long_prompt_tokens": reply.json()["usage"]["prompt_tokens"]}
