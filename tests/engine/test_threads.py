"""The thread that steps the engine computes on the engine's thread count, whatever the process default, and
its OpenMP team is the only one."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import torch

from appliance.engine.async_engine import AsyncEngine
from appliance.engine.sampling import SamplingParams
from tests.openmp_teams import on_a_thread, settled_count, start_team, threads_named


def test_the_stepping_thread_uses_the_engines_thread_count(make_engine, keep_torch_threads) -> None:
    engine = make_engine(threads=2)

    def serve() -> int:
        torch.set_num_threads(1)  # what another thread's set_num_threads leaves as the default of a new thread
        engine.generate([[1, 2, 3, 4]], SamplingParams(max_tokens=2, temperature=0.0))
        return torch.get_num_threads()

    assert on_a_thread("engine-stepper", serve) == 2


def test_the_async_engine_leaves_the_engine_thread_the_only_openmp_team(make_engine, keep_torch_threads) -> None:
    """The thread that builds the front (it loaded the model: it keeps a team) gives its workers back, or the
    engine thread's team runs throttled (appliance.openmp)."""
    engine = make_engine(threads=2)

    def build_the_front() -> int:
        start_team()  # as loading the model and allocating the cache do
        with_team = threads_named("omp-builder")
        front = AsyncEngine(engine)  # its engine thread, created here, takes this thread's name
        try:
            return settled_count("omp-builder", with_team) - with_team  # + the engine thread, - the worker
        finally:
            front.close()

    assert on_a_thread("omp-builder", build_the_front) == 0


def test_an_idle_engine_thread_holds_no_openmp_workers(make_engine, keep_torch_threads) -> None:
    """Between requests the engine thread gives its workers back, or another engine (or an ingest) computing
    meanwhile would run throttled."""
    engine = make_engine(threads=2)

    async def answer(front: AsyncEngine) -> None:
        async for _ in front.generate([1, 2, 3, 4] * 64, SamplingParams(max_tokens=2, temperature=0.0)):
            pass

    def serve_one_request() -> int:
        front = AsyncEngine(engine)  # its engine thread takes this thread's name, and so do its workers
        try:
            idle = threads_named("omp-server")
            asyncio.run(answer(front))  # the engine thread computed on two threads: it had a worker
            return settled_count("omp-server", idle) - idle
        finally:
            front.close()

    assert on_a_thread("omp-server", serve_one_request) == 0


def test_the_engine_thread_runs_at_the_priority_it_was_given(make_engine) -> None:
    """`serve`'s engine thread (APPLIANCE_ENGINE_PROCESS=false) yields the CPU to the API's (appliance.priority);
    the thread that built the front keeps its own."""
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    front = AsyncEngine(make_engine(), nice=mine + 4)
    try:
        stepper = next(t for t in threading.enumerate() if t.name == "engine")
        assert stepper.native_id is not None
        deadline = time.monotonic() + 5  # it lowers itself as it starts
        while os.getpriority(os.PRIO_PROCESS, stepper.native_id) != mine + 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert os.getpriority(os.PRIO_PROCESS, stepper.native_id) == mine + 4
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine
    finally:
        front.close()
