"""The step loop of one `LLMEngine` (vLLM v1's EngineCore busy loop): apply the commands that arrived, step
while there is work, emit what each step produced. The same loop runs on a thread of the server process
(`async_engine.py`) and alone in the engine process (`core_process.py`); only `receive` and `emit` differ.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from appliance.engine.core_messages import (
    AbortRequest,
    AddRequest,
    Command,
    Event,
    Figures,
    InvalidateDocuments,
    Rejected,
    Shutdown,
    StepFailed,
    StepOutputs,
)
from appliance.engine.engine import LLMEngine
from appliance.engine.snapshot import snapshot_of
from appliance.errors import RequestError
from appliance.openmp import release_openmp_workers

log = logging.getLogger("appliance.engine")

# receive(block) -> the commands that arrived (block: wait for at least one); may raise EOFError (no sender)
Receive = Callable[[bool], list[Command]]


class EngineCoreLoop:
    SNAPSHOT_EVERY_S = 0.25

    def __init__(self, engine: LLMEngine, emit: Callable[[Event], None]) -> None:
        self.engine = engine
        self.emit = emit
        self.active: set[str] = set()  # requests added and not finished or aborted
        self._figures_at = 0.0
        self._changed = False  # figures moved since the last ones emitted

    def run(self, receive: Receive) -> None:
        """Until a Shutdown command (or EOFError from `receive`). The idle loop holds no OpenMP workers, which
        would throttle another engine's or an ingest's."""
        engine = self.engine
        while True:
            idle = not engine.has_unfinished()
            if idle:
                if self._changed:
                    self._emit_figures()
                release_openmp_workers()
            for command in receive(idle):
                if isinstance(command, Shutdown):
                    return
                self._apply(command)
            if engine.has_unfinished():
                self._step()

    def _apply(self, command: Command) -> None:
        self._changed = True
        if isinstance(command, InvalidateDocuments):
            for doc_id in command.doc_ids:
                self.engine.invalidate_document(doc_id)
        elif isinstance(command, AbortRequest):
            self.active.discard(command.request_id)
            self.engine.abort(command.request_id)
        elif isinstance(command, AddRequest):
            try:
                self.engine.add_request(command.request_id, command.prompt, command.params, command.layout,
                                        command.doc_cache)
            except RequestError as exc:
                self.emit(Rejected(command.request_id, str(exc)))
                return
            self.active.add(command.request_id)

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as exc:  # noqa: BLE001 - a failed step fails its requests, not the engine
            log.exception("engine step failed")
            failed = sorted(self.active)
            for request_id in failed:
                self.engine.abort(request_id)
            self.active.clear()
            self.emit(StepFailed(failed, f"engine error: {exc}"))
            return
        self._changed = True
        finished = [out.request_id for out in outputs if out.finished]
        self.active.difference_update(finished)
        if finished or time.monotonic() - self._figures_at >= self.SNAPSHOT_EVERY_S:
            self._emit_figures()
        if outputs:
            self.emit(StepOutputs(outputs))

    def _emit_figures(self) -> None:
        self.emit(Figures(snapshot_of(self.engine)))
        self._figures_at = time.monotonic()
        self._changed = False
