"""Overload: four times the engine queue bound at once. The excess is refused at once (503 + Retry-After),
every admitted request completes, and the process's memory returns to its baseline.

"At once" is a p99 under 50 ms. The same burst carries a few `/health` probes: on a machine so loaded that
even they take longer than that, the bound is 1.5 times their p99 (refusing must cost no more than a
trivial request). Both figures are recorded.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time

from tests.security.conftest import SecureServer, rss_mb
from tests.security.figures import record

QUEUE = 4
SERVER_SETTINGS = {"max_queue": QUEUE, "rate_limit_per_minute": 0, "max_tokens_limit": 16}
ENGINE = {"max_num_seqs": QUEUE}
CORPUS = {"space": {"mars.md": "# Mars\n\nMars is the fourth planet. Olympus Mons is its tallest volcano."}}


def _burst(url: str, key: str, n: int) -> list[tuple[str, int, float, str | None]]:
    run = subprocess.run([sys.executable, "-m", "tests.security.burst", url, key, str(n)],
                         capture_output=True, text=True, timeout=600, check=True)
    return [(route, status, seconds, retry) for route, status, seconds, retry in json.loads(run.stdout)]


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def test_excess_is_refused_fast_and_memory_returns(secure_server: SecureServer) -> None:
    key = secure_server.new_key("reader", ["space"])
    _burst(secure_server.url, key, QUEUE)  # warm: key verified, code paths and caches touched
    gc.collect()
    baseline = rss_mb()
    # three bursts: refusal latency is timed on a shared machine, so the check takes the best of the repeats
    # (a refusal path that is slow is slow every time) and the record keeps their median
    p99s, probe_p99s = [], []
    for _ in range(3):
        results = _burst(secure_server.url, key, 4 * QUEUE)
        probes = [seconds for route, _, seconds, _ in results if route == "health"]
        generation = [r for r in results if r[0] != "health"]
        admitted = [r for r in generation if r[1] == 200]
        refused = [r for r in generation if r[1] == 503]
        assert len(generation) == 4 * QUEUE and len(admitted) + len(refused) == len(generation), results
        assert len(admitted) >= QUEUE and len(refused) >= 2 * QUEUE, results  # the queue bound holds
        assert all(retry == "1" for *_, retry in refused)
        p99s.append(_p99([r[2] for r in refused]))
        probe_p99s.append(_p99(probes))
    best = min(range(3), key=lambda i: p99s[i])
    assert p99s[best] < max(0.050, 1.5 * probe_p99s[best]), (p99s, probe_p99s)
    p99, probe_p99 = sorted(p99s)[1], sorted(probe_p99s)[1]
    engine = secure_server.app.state.appliance.engine
    deadline = time.monotonic() + 30
    while engine.num_in_flight and time.monotonic() < deadline:
        time.sleep(0.1)
    gc.collect()
    growth = rss_mb() - baseline
    assert engine.num_in_flight == 0 and growth < 64, growth
    record("overload", {"queue_bound": QUEUE, "sent": len(generation), "admitted_completed": len(admitted),
                        "refused_503": len(refused), "refusal_p99_ms": round(p99 * 1000, 1),
                        "refusal_max_ms": round(max(r[2] for r in refused) * 1000, 1),
                        "health_probe_p99_ms": round(probe_p99 * 1000, 1), "rss_growth_mb": round(growth, 1)})
