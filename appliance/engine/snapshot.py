"""The engine's gauges and running totals at one moment, as `/metrics` shows them.

An engine in another process sends a snapshot with its step outputs (`core_loop.py`); an engine on a thread of
this process is read directly. Either way the collector reads numbers, never the engine's objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.engine.engine import LLMEngine


@dataclass(frozen=True)
class EngineSnapshot:
    num_running: int = 0
    num_waiting: int = 0
    kv_usage: float = 0.0  # share of KV blocks in use (0-1)
    prefix_queries: int = 0  # prompt tokens looked up in the exact prefix cache
    prefix_hits: int = 0
    reused_prefix_hits: int = 0  # prompt tokens found in blocks an earlier blend/reuse request left
    generation_tokens: int = 0
    preemptions: int = 0
    doc_hits: int = 0  # chunk lookups found in the chunk tier (memory)
    doc_misses: int = 0
    doc_disk_hits: int = 0
    doc_encoded_chunks: int = 0
    doc_evictions: int = 0
    doc_invalidations: int = 0
    doc_bytes: int = 0  # chunk KV held in memory
    doc_disk_bytes: int = 0
    doc_entries: int = 0


@dataclass(frozen=True)
class ReplicaReport:
    """One engine replica of a cluster, as it last reported itself (`appliance.cluster`)."""

    replica_id: str
    node_id: str
    pid: int
    in_flight: int  # requests streaming on it
    served: int  # requests it started since it came up
    held: dict[str, int]  # passage id -> tokens whose KV it holds (what the affinity router weighs)
    snapshot: EngineSnapshot = field(default_factory=EngineSnapshot)
    at: float = 0.0  # time.time() of the report


def snapshot_of(engine: LLMEngine) -> EngineSnapshot:
    """Read the figures off a live engine (racy reads of counters, as a scrape always is)."""
    bm, cache = engine.block_manager, engine.doc_cache
    tier = cache.tier
    return EngineSnapshot(
        num_running=engine.num_running, num_waiting=engine.num_waiting, kv_usage=bm.usage(),
        prefix_queries=bm.prefix_queries, prefix_hits=bm.prefix_hits, reused_prefix_hits=bm.reused_prefix_hits,
        generation_tokens=engine.stats.generation_tokens, preemptions=engine.stats.preemptions,
        doc_hits=tier.stats.hits, doc_misses=tier.stats.misses, doc_disk_hits=cache.stats.disk_hits,
        doc_encoded_chunks=cache.stats.encoded_chunks, doc_evictions=tier.stats.evictions,
        doc_invalidations=tier.stats.invalidations, doc_bytes=tier.bytes_used,
        doc_disk_bytes=cache.disk.bytes_used if cache.disk is not None else 0, doc_entries=len(tier))
