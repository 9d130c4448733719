"""What an engine replica holds, as the router sees it: the passages of the requests it served, most recent
last, trimmed to what its cache can hold. Pure; the replica (`engine_replica.py`) reports `held()` in its
routing stats.

Where the replica's document cache keeps passages' KV (blend and reuse), `held(present)` keeps only the
passages whose chunk key is still in the cache's memory tier; otherwise (the exact prefix cache) the ledger's
token budget stands in for the KV pool's capacity, least recently served passages dropped first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class LedgerEntry:
    key: str  # the passage's chunk key in the document cache
    tokens: int
    doc_id: str


class PassageLedger:
    def __init__(self, capacity_tokens: int) -> None:
        self.capacity_tokens = capacity_tokens
        self._entries: OrderedDict[str, LedgerEntry] = OrderedDict()
        self._tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, passages: dict[str, LedgerEntry]) -> None:
        """A request with these passages (passage id -> entry) was served here."""
        for pid, entry in passages.items():
            old = self._entries.pop(pid, None)
            self._tokens += entry.tokens - (old.tokens if old is not None else 0)
            self._entries[pid] = entry
        while self._tokens > self.capacity_tokens and self._entries:
            _, dropped = self._entries.popitem(last=False)
            self._tokens -= dropped.tokens

    def forget_documents(self, doc_ids: set[str]) -> None:
        for pid in [pid for pid, e in self._entries.items() if e.doc_id in doc_ids]:
            self._tokens -= self._entries.pop(pid).tokens

    def held(self, present: Callable[[str], bool] | None = None) -> dict[str, int]:
        """Passage id -> tokens of what the replica holds (`present(key)`: whether the cache still has it)."""
        return {pid: e.tokens for pid, e in self._entries.items() if present is None or present(e.key)}
