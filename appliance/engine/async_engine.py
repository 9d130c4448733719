"""Runs the engine's step loop on its own thread and streams each request's outputs to asyncio.

The event loop never runs model code: it hands requests to the engine thread through an inbox and
receives `RequestOutput`s through a per-request asyncio queue. A cancelled stream aborts its request.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

from appliance.engine.doc_cache.layout import PromptLayout
from appliance.engine.engine import LLMEngine
from appliance.engine.outputs import RequestOutput
from appliance.engine.sampling import SamplingParams
from appliance.errors import ApplianceError, QueueFullError, RequestError
from appliance.openmp import release_openmp_workers

log = logging.getLogger("appliance.engine")


@dataclass
class _Add:
    request_id: str
    prompt: list[int]
    params: SamplingParams
    sink: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    layout: PromptLayout | None = None
    doc_cache: str | None = None


@dataclass
class _Abort:
    request_id: str


@dataclass
class _Invalidate:
    doc_ids: list[str]


class AsyncEngine:
    """Thread-safe front of `LLMEngine` for the server. At most `max_queue` requests are in flight.

    The constructing thread gives back its OpenMP workers (it loaded the model and set up the engine): the
    engine thread's must be the only ones for its parallel ops to run unthrottled (`appliance.openmp`). The
    engine thread gives back its own whenever it goes idle, for another engine's or an ingest's sake."""

    def __init__(self, engine: LLMEngine, max_queue: int = 256) -> None:
        release_openmp_workers()
        self.engine = engine
        self.max_queue = max_queue
        self._inbox: queue.Queue[_Add | _Abort | _Invalidate | None] = queue.Queue()
        self._sinks: dict[str, _Add] = {}
        self._in_flight = 0
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._thread.start()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def num_in_flight(self) -> int:
        return self._in_flight

    def close(self) -> None:
        self._inbox.put(None)
        self._thread.join(timeout=10)

    async def generate(self, prompt: list[int], params: SamplingParams, request_id: str | None = None,
                       layout: PromptLayout | None = None, doc_cache: str | None = None
                       ) -> AsyncIterator[RequestOutput]:
        """Stream the outputs of one request until it finishes. Raises QueueFullError, RequestError.
        `layout` and `doc_cache` are as in `LLMEngine.add_request`."""
        self.engine.validate_prompt(prompt)
        with self._lock:
            if self._in_flight >= self.max_queue:
                raise QueueFullError(f"the engine queue is full ({self.max_queue} requests); retry shortly")
            self._in_flight += 1
        rid = request_id or f"req-{next(self._ids)}"
        sink: asyncio.Queue = asyncio.Queue()
        self._inbox.put(_Add(rid, prompt, params, sink, asyncio.get_running_loop(), layout, doc_cache))
        finished = False
        try:
            while True:
                item = await sink.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            with self._lock:
                self._in_flight -= 1
            if not finished:
                self._inbox.put(_Abort(rid))

    def _run(self) -> None:
        engine = self.engine
        while True:
            block = not engine.has_unfinished()
            if block:  # idle: hold no OpenMP workers that would throttle another engine's or an ingest's
                release_openmp_workers()
            try:
                while True:
                    cmd = self._inbox.get(block=block)
                    block = False
                    if cmd is None:
                        return
                    self._apply(cmd)
            except queue.Empty:
                pass
            if not engine.has_unfinished():
                continue
            try:
                outputs = engine.step()
            except Exception as exc:  # noqa: BLE001 - a failed step fails its requests, not the server
                log.exception("engine step failed")
                self._fail_all(ApplianceError(f"engine error: {exc}"))
                continue
            for out in outputs:
                target = self._sinks.get(out.request_id)
                if target is not None:
                    target.loop.call_soon_threadsafe(target.sink.put_nowait, out)
                    if out.finished:
                        del self._sinks[out.request_id]

    def invalidate_documents(self, doc_ids: list[str]) -> None:
        """Drop the cached chunk KV of these documents (on the engine thread, soon; safe from any thread)."""
        self._inbox.put(_Invalidate(list(doc_ids)))

    def _apply(self, cmd: _Add | _Abort | _Invalidate) -> None:
        if isinstance(cmd, _Invalidate):
            for doc_id in cmd.doc_ids:
                self.engine.invalidate_document(doc_id)
            return
        if isinstance(cmd, _Abort):
            self._sinks.pop(cmd.request_id, None)
            self.engine.abort(cmd.request_id)
            return
        try:
            self.engine.add_request(cmd.request_id, cmd.prompt, cmd.params, cmd.layout, cmd.doc_cache)
        except RequestError as exc:
            cmd.loop.call_soon_threadsafe(cmd.sink.put_nowait, exc)
            return
        self._sinks[cmd.request_id] = cmd

    def _fail_all(self, exc: Exception) -> None:
        for rid, target in list(self._sinks.items()):
            target.loop.call_soon_threadsafe(target.sink.put_nowait, exc)
            self.engine.abort(rid)
        self._sinks.clear()
