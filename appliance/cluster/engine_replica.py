"""One engine replica of the `Engine` deployment: an `LLMEngine` stepped on a thread of the replica's own process
(`AsyncEngine`; Ray already gives each replica a process, so the API never shares its GIL).

Each request arrives as an `AddRequest` plus its passages (the router read them to choose this replica) and
streams back `RequestOutput`s; Ray cancels the call when the client goes away, which aborts the request here
and frees its blocks. About once a second the replica reports to the cluster's board (`board.py`) and applies
the document invalidations published there; `record_routing_stats` gives Ray's router what it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator

import ray
from ray import serve

from appliance.cluster.affinity import passage_id
from appliance.cluster.board import get_board
from appliance.cluster.ledger import LedgerEntry, PassageLedger
from appliance.config import EngineConfig
from appliance.engine.async_engine import AsyncEngine
from appliance.engine.core_messages import AddRequest
from appliance.engine.info import EngineInfo
from appliance.engine.outputs import RequestOutput
from appliance.engine.snapshot import ReplicaReport, snapshot_of
from appliance.server.warmup import warm_engine

log = logging.getLogger("appliance.cluster")


class EngineReplica:
    """The `Engine` deployment's class (`app.py` wraps it in `serve.deployment`)."""

    REPORT_EVERY_S = 1.0

    async def __init__(self, config: EngineConfig, max_queue: int, app_name: str,  # type: ignore[misc]
                       warmup_tokens: int = 0, nice: int = 0) -> None:
        """Load the engine and warm it (`warm_engine`: one RAG-shaped request) before Ray routes anything here,
        so each replica's first question costs what the next ones do."""
        self.front = AsyncEngine.serving(config, max_queue, nice)
        engine = self.front.engine
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.node_id = ray.get_runtime_context().get_node_id()
        self.served = 0
        self._keyed_by_tier = config.doc_cache in ("blend", "reuse")
        self._tier = engine.doc_cache.tier
        bm = engine.block_manager  # what it can hold: the paged pool's tokens and the chunk tier's
        self.ledger = PassageLedger(bm.num_blocks * bm.block_size
                                    + self._tier.budget_bytes // max(1, engine.kv_bytes_per_token))
        self._board = get_board(app_name)
        self._invalidations_seen = 0
        if warmup_tokens > 0:
            await warm_engine(self.front, warmup_tokens)
        self._reporter = asyncio.get_running_loop().create_task(self._report_forever())

    def info(self) -> EngineInfo:
        return self.front.info

    def check_health(self) -> None:
        """Ray Serve calls this every few seconds: a replica whose engine has stopped (its streams ended with an
        error) is marked unhealthy and replaced."""
        if self.front.down is not None:
            raise RuntimeError(self.front.down)

    async def generate(self, command: AddRequest, passages: dict[str, int] | None = None
                       ) -> AsyncIterator[RequestOutput]:
        """Stream one request's outputs. `passages` is for the router only (the layout carries the same)."""
        self.served += 1
        if command.layout is not None and command.layout.chunks:
            keys = self.front.engine.doc_cache.keys(command.prompt, command.layout)
            self.ledger.record({passage_id(s.doc_id, s.chunk_id): LedgerEntry(key, s.length, s.doc_id)
                                for s, key in zip(command.layout.chunks, keys, strict=True)})
        async for out in self.front.generate(command.prompt, command.params, command.request_id, command.layout,
                                             command.doc_cache):
            yield out

    def held(self) -> dict[str, int]:
        present = (lambda key: key in self._tier) if self._keyed_by_tier else None
        return self.ledger.held(present)

    def record_routing_stats(self) -> dict[str, object]:
        """Ray's router reads this (every `request_routing_stats_period_s`) as the replica's `routing_stats`."""
        return {"held": self.held()}

    def report(self) -> ReplicaReport:
        return ReplicaReport(self.replica_id, self.node_id, os.getpid(), self.front.num_in_flight, self.served,
                             self.held(), snapshot_of(self.front.engine), time.time())

    async def _report_forever(self) -> None:
        while True:
            try:
                await self._board.report.remote(self.report())
                self._invalidations_seen, doc_ids = await self._board.invalidations_since.remote(
                    self._invalidations_seen)
                if doc_ids:
                    self.front.invalidate_documents(doc_ids)
                    self.ledger.forget_documents(set(doc_ids))
            except Exception:  # noqa: BLE001 - the board is advisory: serving goes on without it
                log.exception("replica %s could not reach the cluster board", self.replica_id)
            await asyncio.sleep(self.REPORT_EVERY_S)

    def __del__(self) -> None:
        """Ray Serve calls this when it stops the replica (scale-down, shutdown)."""
        reporter = getattr(self, "_reporter", None)  # None: the constructor failed before it
        if reporter is not None:
            reporter.cancel()
            with contextlib.suppress(Exception):
                self._board.leave.remote(self.replica_id)
        if hasattr(self, "front"):
            self.front.close()
