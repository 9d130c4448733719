"""How often each chunk was retrieved, kept in the store so that `appliance warm` can encode the passages
people ask about first when the disk tier cannot hold a whole collection.

Counting never slows a search down or makes it wait: counts gather in memory and are written at most once
every `flush_s` seconds, waiting at most `lock_wait_s` for the store's write lock; while another writer holds
it (an ingest publishing its documents) the counts stay in memory for the next write. A process that dies
loses at most its last interval's counts.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable

from retrieval.store import Store


class RetrievalCounter:
    """Counts chunk retrievals and writes them to `store` now and then (see the module doc). Thread-safe."""

    def __init__(self, store: Store, flush_s: float = 1.0, lock_wait_s: float = 0.05) -> None:
        self.store = store
        self.flush_s = flush_s
        self.lock_wait_s = lock_wait_s
        self._pending: Counter[int] = Counter()
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()

    def record(self, chunk_ids: Iterable[int]) -> None:
        """One more retrieval of each of `chunk_ids`; written with the next flush (this one when it is due)."""
        with self._lock:
            self._pending.update(chunk_ids)
            due = time.monotonic() - self._last_flush >= self.flush_s
        if due:
            self.flush()

    def flush(self) -> bool:
        """Write the counts gathered so far; False when the store was busy (they are kept for the next try)."""
        with self._lock:
            counts, self._pending = dict(self._pending), Counter()
            self._last_flush = time.monotonic()
        if not counts:
            return True
        try:
            self.store.add_retrievals(counts, self.lock_wait_s)
        except sqlite3.OperationalError:  # locked by another writer: keep the counts
            with self._lock:
                self._pending.update(counts)
            return False
        return True
