"""What each API key and each collection costs: requests, prompt tokens computed vs reused, generated
tokens and engine seconds.

Kept in memory for the life of the process (a restart starts from zero); `GET /api/admin/usage` reads it.
Engine seconds are approximated by each request's wall time inside `generate` (queueing included), so
concurrent requests together can exceed the wall clock.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

from appliance.engine.outputs import RequestOutput


@dataclass(frozen=True)
class RequestUsage:
    """The cost of one finished generation."""

    prompt_tokens_computed: int
    prompt_tokens_reused: int
    generated_tokens: int
    engine_seconds: float

    @classmethod
    def of_output(cls, last: RequestOutput, engine_seconds: float) -> RequestUsage:
        """From the final output of a request and the seconds its `generate` took."""
        return cls(last.num_computed_prompt_tokens, last.num_cached_tokens, last.num_output_tokens, engine_seconds)


@dataclass
class _Totals:
    requests: int = 0
    prompt_tokens_computed: int = 0
    prompt_tokens_reused: int = 0
    generated_tokens: int = 0
    engine_seconds: float = 0.0

    def add(self, usage: RequestUsage) -> None:
        self.requests += 1
        self.prompt_tokens_computed += usage.prompt_tokens_computed
        self.prompt_tokens_reused += usage.prompt_tokens_reused
        self.generated_tokens += usage.generated_tokens
        self.engine_seconds += usage.engine_seconds


class UsageBook:
    """Thread-safe running totals per key id and per collection (in memory)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, _Totals] = {}
        self._collections: dict[str, _Totals] = {}

    def record(self, key_id: str, collection: str | None, usage: RequestUsage) -> None:
        """Add one request to its key, and to its collection when it was a question over one."""
        with self._lock:
            self._keys.setdefault(key_id, _Totals()).add(usage)
            if collection is not None:
                self._collections.setdefault(collection, _Totals()).add(usage)

    def snapshot(self) -> dict[str, dict[str, dict]]:
        """`{"keys": {key_id: totals}, "collections": {name: totals}}` with engine seconds rounded to ms."""
        def shape(totals: _Totals) -> dict:
            d = asdict(totals)
            d["engine_seconds"] = round(d["engine_seconds"], 3)
            return d

        with self._lock:
            return {"keys": {k: shape(t) for k, t in sorted(self._keys.items())},
                    "collections": {c: shape(t) for c, t in sorted(self._collections.items())}}
