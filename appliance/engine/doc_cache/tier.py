"""The in-memory chunk tier: position-free passage KV under a byte budget, evicted least-frequently-used with
aging.

An entry's priority is `clock + hits * cost / size`, the form of Greedy-Dual-Size-Frequency (RAGCache), with
`cost` its token count and `size` its bytes. Both grow with the token count, so `cost / size` is the same for
every entry of one model: what this really is, is LFU with aging (`hits` how often it was used; `clock`
rises to the priority of each evicted entry, so entries not used for a while age out). A cost that varies
(encode seconds, which grow faster than the length) is not measured yet. Pinned entries (held by requests
being admitted) are never evicted; the budget may be exceeded while pins hold it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger("appliance.engine")


@dataclass(eq=False)
class ChunkEntry:
    """One passage's KV in every layer; keys before RoPE, so they can be rotated to any position."""

    key: str
    k: torch.Tensor  # [layers, n, KVH, D] pre-RoPE keys
    v: torch.Tensor  # [layers, n, KVH, D]
    doc_ids: frozenset[str] = frozenset()
    pins: int = 0
    hits: int = 0
    priority: float = 0.0

    @property
    def num_tokens(self) -> int:
        return self.k.shape[1]

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


@dataclass
class TierStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    invalidations: int = 0


class ChunkTier:
    """Contract: `get` counts a hit or a miss and refreshes the entry's priority; `put` stores an entry,
    evicting unpinned entries of lowest priority until the budget holds; `pin`/`unpin` protect entries in use;
    `invalidate(doc_id)` drops every entry built from that document."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.entries: dict[str, ChunkEntry] = {}
        self.bytes_used = 0
        self.clock = 0.0
        self.stats = TierStats()

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def get(self, key: str) -> ChunkEntry | None:
        entry = self.entries.get(key)
        if entry is None:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        self._touch(entry)
        return entry

    def put(self, entry: ChunkEntry) -> None:
        old = self.entries.pop(entry.key, None)
        if old is not None:
            self.bytes_used -= old.nbytes
            entry.pins += old.pins
        self._touch(entry)
        self._make_room(entry.nbytes)
        self.entries[entry.key] = entry
        self.bytes_used += entry.nbytes

    def pin(self, entry: ChunkEntry) -> None:
        entry.pins += 1

    def unpin(self, entry: ChunkEntry) -> None:
        entry.pins -= 1
        if self.bytes_used > self.budget_bytes:
            self._make_room(0)

    def invalidate(self, doc_id: str) -> list[str]:
        """Drop the entries of one document; returns their keys. Requests already holding one keep it."""
        keys = [key for key, entry in self.entries.items() if doc_id in entry.doc_ids]
        for key in keys:
            self.bytes_used -= self.entries.pop(key).nbytes
        self.stats.invalidations += len(keys)
        return keys

    def _touch(self, entry: ChunkEntry) -> None:
        entry.hits += 1
        entry.priority = self.clock + entry.hits * entry.num_tokens / max(entry.nbytes, 1)

    def _make_room(self, incoming: int) -> None:
        while self.bytes_used + incoming > self.budget_bytes:
            victims = [e for e in self.entries.values() if e.pins == 0]
            if not victims:
                log.debug("chunk tier over budget: every entry is pinned")
                return
            victim = min(victims, key=lambda e: e.priority)
            self.clock = victim.priority
            del self.entries[victim.key]
            self.bytes_used -= victim.nbytes
            self.stats.evictions += 1
