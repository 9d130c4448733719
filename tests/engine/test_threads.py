"""The thread that steps the engine computes on the engine's thread count, whatever the process default, and
its OpenMP team is the only one."""

from __future__ import annotations

import asyncio
import threading

import torch

from appliance.engine.async_engine import AsyncEngine
from appliance.engine.sampling import SamplingParams
from tests.openmp_teams import num_threads, on_a_thread, settled_threads, start_team


def test_the_stepping_thread_uses_the_engines_thread_count(make_engine, keep_torch_threads) -> None:
    engine = make_engine(threads=2)
    seen: list[int] = []

    def serve() -> None:
        torch.set_num_threads(1)  # what another thread's set_num_threads leaves as the default of a new thread
        engine.generate([[1, 2, 3, 4]], SamplingParams(max_tokens=2, temperature=0.0))
        seen.append(torch.get_num_threads())

    thread = threading.Thread(target=serve)
    thread.start()
    thread.join()
    assert seen == [2]


def test_the_async_engine_leaves_the_engine_thread_the_only_openmp_team(make_engine, keep_torch_threads) -> None:
    """The thread that builds the front (it loaded the model: it keeps a team) gives its workers back, or the
    engine thread's team runs throttled (appliance.openmp)."""
    engine = make_engine(threads=2)

    def build_the_front() -> int:
        start_team()  # as loading the model and allocating the cache do
        before = num_threads()
        front = AsyncEngine(engine)
        try:
            return settled_threads(before) - before  # + the engine thread, - this thread's worker
        finally:
            front.close()

    assert on_a_thread(build_the_front) == 0


def test_an_idle_engine_thread_holds_no_openmp_workers(make_engine, keep_torch_threads) -> None:
    """Between requests the engine thread gives its workers back, or another engine (or an ingest) computing
    meanwhile would run throttled."""
    engine = make_engine(threads=2)

    async def answer(front: AsyncEngine) -> None:
        async for _ in front.generate([1, 2, 3, 4] * 64, SamplingParams(max_tokens=2, temperature=0.0)):
            pass

    def serve_one_request() -> int:
        front = AsyncEngine(engine)
        try:
            before = num_threads()  # this thread (no team: the front took it back) and the idle engine thread
            asyncio.run(answer(front))  # the engine thread computed on two threads: it had a worker
            return settled_threads(before) - before
        finally:
            front.close()

    assert on_a_thread(serve_one_request) == 0
