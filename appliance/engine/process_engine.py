"""The engine in its own process (vLLM v1's EngineCore pattern): the server process keeps HTTP, auth,
retrieval and tokenization; the engine process (`core_process.py`) runs the step loop, the KV pool and the
document cache, so the API never waits for the engine's GIL.

One duplex pipe carries pickled commands one way and per-step events the other. Two threads of the server
process move them: a sender (the event loop only queues a command, never blocks on a full pipe) and a reader,
which hands events to the front and, when the pipe closes without a Shutdown asked for, marks the engine down
and ends every stream with an error.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import threading
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from appliance.config import EngineConfig
from appliance.engine import core_process
from appliance.engine.core_messages import Command, Shutdown
from appliance.engine.core_process import Ready, StartFailed
from appliance.engine.front import EngineFront
from appliance.engine.info import EngineInfo
from appliance.engine.loader import load_tokenizer
from appliance.errors import ApplianceError, ModelLoadError

log = logging.getLogger("appliance.engine")


class ProcessEngine(EngineFront):
    CLOSE_WAIT_S = 10.0

    def __init__(self, process: BaseProcess, conn: Connection, info: EngineInfo, config: EngineConfig,
                 max_queue: int) -> None:
        super().__init__(info, load_tokenizer(config.model, config.data_dir), max_queue)
        self.process = process
        self._conn = conn
        self._outbox: queue.Queue[Command | None] = queue.Queue()
        self._closing = False
        self._sender = threading.Thread(target=self._send_loop, name="engine-sender", daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name="engine-reader", daemon=True)
        self._sender.start()
        self._reader.start()

    @classmethod
    def start(cls, config: EngineConfig, max_queue: int = 256, log_level: str = "info", nice: int = 0
              ) -> ProcessEngine:
        """Start the engine process (its threads at the nice value `nice`: `appliance.priority`) and wait until
        its model is loaded. Raises ModelLoadError (or the ApplianceError the process reported) when it cannot
        start."""
        context = multiprocessing.get_context("spawn")  # a fork would copy this process's threads' locks
        conn, child_end = context.Pipe(duplex=True)
        process = context.Process(target=core_process.main, args=(config, child_end, log_level, nice),
                                  name="appliance-engine", daemon=True)
        process.start()
        child_end.close()
        try:
            first = conn.recv()
        except EOFError:
            process.join(5)
            raise ModelLoadError(f"the engine process exited while starting (exit code {process.exitcode})"
                                 ) from None
        if isinstance(first, StartFailed):
            process.join(5)
            raise ApplianceError(first.message)
        assert isinstance(first, Ready), first
        return cls(process, conn, first.info, config, max_queue)

    def close(self) -> None:
        """Stop the engine process (Shutdown, then SIGTERM's stronger cousins if it does not exit in time)."""
        self._closing = True
        self._outbox.put(Shutdown())
        self._outbox.put(None)
        self.process.join(self.CLOSE_WAIT_S)
        if self.process.is_alive():
            log.warning("the engine process did not stop within %.0f s: killing it", self.CLOSE_WAIT_S)
            self.process.kill()
            self.process.join(5)
        self._reader.join(5)

    def _send(self, command: Command) -> None:
        self._outbox.put(command)

    def _send_loop(self) -> None:
        while (command := self._outbox.get()) is not None:
            try:
                self._conn.send(command)
            except (BrokenPipeError, ConnectionResetError, OSError):
                return  # the reader reports the engine down

    def _read_loop(self) -> None:
        while True:
            try:
                event = self._conn.recv()
            except (EOFError, ConnectionResetError, OSError):
                break
            self._on_event(event)
        self.process.join(5)
        reason = f"the engine process stopped (exit code {self.process.exitcode})"
        if not self._closing:
            log.error("%s: every request in flight ends with an error and /ready answers 503", reason)
        self._went_down(reason)
        self._outbox.put(None)
