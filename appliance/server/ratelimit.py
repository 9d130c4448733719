"""Per-key rate limits: a token bucket per API key id (in memory, per process)."""

from __future__ import annotations

import threading
import time


class RateLimiter:
    """Each key may make `burst` requests at once, refilled at `per_minute` requests per minute.
    `per_minute = 0` turns the limit off."""

    def __init__(self, per_minute: int, burst: int) -> None:
        self.per_minute = per_minute
        self.burst = float(burst)
        self._rate = per_minute / 60.0  # tokens per second
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, at)

    def acquire(self, key_id: str) -> float:
        """Take one request from `key_id`'s bucket: 0.0 when allowed, else the seconds until it would be."""
        if self.per_minute <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(key_id, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self._rate)
            if tokens >= 1.0:
                self._buckets[key_id] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key_id] = (tokens, now)
            return (1.0 - tokens) / self._rate
