"""The server's side of an engine: stream a request's outputs to asyncio, whichever side of a process boundary
the step loop runs on (`async_engine.AsyncEngine`: a thread here; `process_engine.ProcessEngine`: the engine
process). The event loop never runs model code and never waits for the loop's step.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass

from appliance.engine.core_messages import (
    AbortRequest,
    AddRequest,
    Command,
    Event,
    Figures,
    InvalidateDocuments,
    Rejected,
    StepFailed,
    StepOutputs,
)
from appliance.engine.doc_cache.layout import PromptLayout
from appliance.engine.grammar import GrammarCompiler, GrammarSpec
from appliance.engine.info import EngineInfo
from appliance.engine.outputs import RequestOutput
from appliance.engine.sampling import SamplingParams
from appliance.engine.snapshot import EngineSnapshot, ReplicaReport
from appliance.engine.tokenizer import TextTokenizer
from appliance.errors import ApplianceError, EngineUnavailableError, QueueFullError, RequestError


@dataclass
class _Stream:
    sink: asyncio.Queue
    loop: asyncio.AbstractEventLoop

    def put(self, item: RequestOutput | Exception) -> None:
        self.loop.call_soon_threadsafe(self.sink.put_nowait, item)


class EngineFront(ABC):
    """At most `max_queue` requests in flight. Subclasses carry commands to the step loop (`_send`, from the
    event loop: must not block) and hand its events to `_on_event` (from any thread)."""

    def __init__(self, info: EngineInfo, tokenizer: TextTokenizer, max_queue: int) -> None:
        self.info = info
        self.tokenizer = tokenizer
        self.max_queue = max_queue
        self.figures = EngineSnapshot()
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._down: str | None = None

    @property
    def max_model_len(self) -> int:
        return self.info.max_model_len

    @property
    def num_in_flight(self) -> int:
        return len(self._streams)

    @property
    def down(self) -> str | None:
        """Why the engine can serve no more requests (its process or thread died), else None."""
        return self._down

    @abstractmethod
    def _send(self, command: Command) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def snapshot(self) -> EngineSnapshot:
        """The engine's latest figures (`/metrics`); a cluster gives its figures per replica (`replicas()`)."""
        return self.figures

    def replicas(self) -> list[ReplicaReport] | None:
        """A cluster's engine replicas as they last reported (`/metrics` per replica, `/api/admin/cluster`);
        None for one engine."""
        return None

    @functools.cached_property
    def grammars(self) -> GrammarCompiler:
        """This side's grammar compiler: it checks a request's grammar before the engine sees it."""
        return GrammarCompiler(self.tokenizer, self.info.vocab_size)

    async def check_grammar(self, spec: GrammarSpec) -> None:
        """Raise RequestError (HTTP 400, with xgrammar's reason) if `spec` cannot be compiled: on a worker
        thread, cached per grammar, so a bad schema is refused before anything streams."""
        await asyncio.to_thread(self.grammars.compile, spec)

    def invalidate_documents(self, doc_ids: list[str]) -> None:
        """Drop the cached chunk KV of these documents (soon, on the engine's side; safe from any thread)."""
        self._send(InvalidateDocuments(list(doc_ids)))

    async def generate(self, prompt: list[int], params: SamplingParams, request_id: str | None = None,
                       layout: PromptLayout | None = None, doc_cache: str | None = None
                       ) -> AsyncIterator[RequestOutput]:
        """Stream the outputs of one request until it finishes; closing the stream early aborts the request.
        Raises QueueFullError, RequestError, EngineUnavailableError. `layout` and `doc_cache` are as in
        `LLMEngine.add_request`."""
        self.info.check_prompt(prompt)
        rid = request_id or f"req-{next(self._ids)}"
        stream = _Stream(asyncio.Queue(), asyncio.get_running_loop())
        with self._lock:  # `_fail(None, ...)` takes it too: a stream is either failed there or refused here
            if self.down is not None:
                raise EngineUnavailableError(self.down)
            if len(self._streams) >= self.max_queue:
                raise QueueFullError(f"the engine queue is full ({self.max_queue} requests); retry shortly")
            if rid in self._streams:
                raise RequestError(f"duplicate request id {rid}")
            self._streams[rid] = stream
        finished = False
        try:
            self._send(AddRequest(rid, prompt, params, layout, doc_cache))
            while True:
                item = await stream.sink.get()
                if isinstance(item, Exception):
                    finished = True  # the engine's side has let go of it already
                    raise item
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            with self._lock:
                self._streams.pop(rid, None)
            if not finished and self.down is None:
                self._send(AbortRequest(rid))

    def _on_event(self, event: Event) -> None:
        if isinstance(event, Figures):
            self.figures = event.snapshot
        elif isinstance(event, StepOutputs):
            for out in event.outputs:
                stream = self._streams.get(out.request_id)
                if stream is not None:
                    stream.put(out)
        elif isinstance(event, Rejected):
            self._fail([event.request_id], RequestError(event.message))
        elif isinstance(event, StepFailed):
            self._fail(event.request_ids, ApplianceError(event.message))

    def _went_down(self, reason: str) -> None:
        """The step loop is gone: refuse new requests (`down`, so /ready answers 503) and end every stream in
        flight with EngineUnavailableError."""
        self._down = reason  # before `_fail` takes the lock: a stream registered after it is refused in `generate`
        self._fail(None, EngineUnavailableError(reason))

    def _fail(self, request_ids: list[str] | None, exc: Exception) -> None:
        """End these streams (None: every one) with `exc`."""
        with self._lock:
            ids = list(self._streams) if request_ids is None else request_ids
            streams = [self._streams.get(rid) for rid in ids]
        for stream in streams:
            if stream is not None:
                stream.put(exc)
