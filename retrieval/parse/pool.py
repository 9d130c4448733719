"""Parsing in a separate worker process: a per-file time limit that can really stop a stuck parser,
a memory cap for the worker, and parsing of the next files overlapped with the caller's embedding."""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
import resource
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

from retrieval.errors import CorruptFileError, FileError, ParseTimeoutError
from retrieval.parse import load_parsers, parse_bytes
from retrieval.types import ParsedDocument

T = TypeVar("T")


def _init_worker(memory_bytes: int) -> None:
    """Cap the worker's memory, and let the embedding (the ingestion's critical path) win the CPU."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    os.nice(10)


def _ready() -> None:
    """Runs once in a fresh worker so that its imports are done before the first timed file."""
    load_parsers()


def _parse_in_worker(data: bytes, name: str) -> ParsedDocument:
    try:
        return parse_bytes(data, name)
    except FileError:
        raise
    except MemoryError as exc:
        raise CorruptFileError(f"{name}: needs too much memory to parse") from exc
    except Exception as exc:  # a parser bug must cost one file, not the job; the message says what happened
        raise CorruptFileError(f"{name}: could not be parsed ({type(exc).__name__}: {exc})") from exc


class ParserPool(Generic[T]):
    """One spawned worker process (started lazily, restarted after a timeout), its address space capped at
    `memory_bytes` (a parser that needs more fails its file with a MemoryError, never the server).

    `parse_many` keeps up to `prefetch` files in flight and yields `(tag, ParsedDocument | FileError)` in
    input order. A file gets `timeout_s` seconds from the moment the worker can start on it.
    """

    def __init__(self, timeout_s: float = 60.0, prefetch: int = 2, memory_bytes: int = 2 * 1024**3) -> None:
        self.timeout_s = timeout_s
        self.prefetch = max(1, prefetch)
        self.memory_bytes = memory_bytes
        self._pool: multiprocessing.pool.Pool | None = None

    def _worker(self) -> multiprocessing.pool.Pool:
        if self._pool is None:
            self._pool = multiprocessing.get_context("spawn").Pool(
                1, initializer=_init_worker, initargs=(self.memory_bytes,)
            )
            self._pool.apply(_ready)  # start-up (interpreter + parser imports) is not charged to a file
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def parse_many(self, items: Iterable[tuple[T, str, bytes]]) -> Iterator[tuple[T, ParsedDocument | FileError]]:
        source = iter(items)
        flight: deque[tuple[T, str, bytes, multiprocessing.pool.AsyncResult]] = deque()

        def fill() -> None:
            while len(flight) < self.prefetch:
                item = next(source, None)
                if item is None:
                    return
                tag, name, data = item
                flight.append((tag, name, data, self._worker().apply_async(_parse_in_worker, (data, name))))

        fill()
        ready_at = time.monotonic()
        while flight:
            tag, name, data, pending = flight.popleft()
            result: ParsedDocument | FileError
            try:
                result = pending.get(timeout=max(0.0, ready_at + self.timeout_s - time.monotonic()))
            except FileError as exc:
                result = exc
            except multiprocessing.TimeoutError:
                result = ParseTimeoutError(f"{name}: parsing took longer than {self.timeout_s:g} s")
                self.close()  # the stuck worker dies; files still in flight go to a fresh one
                flight = deque((t, n, d, self._worker().apply_async(_parse_in_worker, (d, n))) for t, n, d, _ in flight)
            ready_at = time.monotonic()
            fill()
            yield tag, result
