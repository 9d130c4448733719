"""An engine stepped on a thread of this process (`appliance ask`, the benchmarks, the tests; `appliance serve`
with APPLIANCE_ENGINE_PROCESS=false): the front of `front.py` over `EngineCoreLoop` on a thread.

The commands reach the thread through an inbox; its events are handed to the front right there (they only
schedule work on the requesters' event loops).
"""

from __future__ import annotations

import logging
import queue
import threading

from appliance.config import EngineConfig
from appliance.engine.core_loop import EngineCoreLoop
from appliance.engine.core_messages import Command, Shutdown
from appliance.engine.engine import LLMEngine
from appliance.engine.front import EngineFront
from appliance.engine.snapshot import EngineSnapshot, snapshot_of
from appliance.heap import freeze_serving_engine
from appliance.openmp import release_openmp_workers
from appliance.priority import lower_priority

log = logging.getLogger("appliance.engine")


class AsyncEngine(EngineFront):
    """The constructing thread gives back its OpenMP workers (it loaded the model and set up the engine): the
    engine thread's must be the only ones for its parallel ops to run unthrottled (`appliance.openmp`). The
    engine thread (and the workers it starts) runs at the nice value `nice` (`appliance.priority`). Should the
    loop itself raise (a failed step only fails its requests), the engine is `down`: every stream ends with an
    error and new requests are refused, never left waiting for a thread that is gone."""

    def __init__(self, engine: LLMEngine, max_queue: int = 256, nice: int = 0) -> None:
        super().__init__(engine.info, engine.tokenizer, max_queue)
        release_openmp_workers()
        self.engine = engine
        self._inbox: queue.Queue[Command] = queue.Queue()
        self._core = EngineCoreLoop(engine, self._on_event)
        self._thread = threading.Thread(target=self._run, args=(nice,), name="engine", daemon=True)
        self._thread.start()

    @classmethod
    def serving(cls, config: EngineConfig, max_queue: int, nice: int) -> AsyncEngine:
        """A serving process's engine on a thread (`serve` with APPLIANCE_ENGINE_PROCESS=false, a cluster
        replica): loaded from `config`, what it built kept out of garbage collection (`appliance.heap`), its
        thread at the nice value `nice` (`appliance.priority`)."""
        engine = LLMEngine.from_config(config)
        freeze_serving_engine(engine.runner.wait_for_builds)
        return cls(engine, max_queue, nice)

    def _run(self, nice: int) -> None:
        lower_priority(nice)
        try:
            self._core.run(self._receive)
        except Exception as exc:  # noqa: BLE001 - reported to every stream; the thread ends either way
            log.exception("the engine thread stopped")
            self._went_down(f"the engine thread stopped: {exc}")

    def snapshot(self) -> EngineSnapshot:
        return snapshot_of(self.engine)

    def close(self) -> None:
        self._inbox.put(Shutdown())
        self._thread.join(timeout=10)

    def _send(self, command: Command) -> None:
        self._inbox.put(command)

    def _receive(self, block: bool) -> list[Command]:
        commands: list[Command] = []
        try:
            while True:
                commands.append(self._inbox.get(block=block and not commands))
        except queue.Empty:
            return commands
