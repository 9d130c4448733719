"""The engine in its own process (`ProcessEngine`): the same outputs as on a thread, refusals and aborts that
cross the pipe, figures that follow, and a start that fails in one line."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.engine.process_engine import ProcessEngine
from appliance.engine.sampling import SamplingParams
from appliance.errors import ApplianceError, RequestError
from tests.reference_engine import reference_config

GREEDY = SamplingParams(max_tokens=12, temperature=0.0)


ENGINE_NICE = os.getpriority(os.PRIO_PROCESS, 0) + 3  # below this process, as `serve` runs its engine


@pytest.fixture(scope="module")
def process_engine(loaded_model, model_cache_dir: Path) -> Iterator[ProcessEngine]:
    engine = ProcessEngine.start(reference_config(model_cache_dir), max_queue=8, nice=ENGINE_NICE)
    yield engine
    engine.close()
    assert engine.process.exitcode == 0  # it stopped on Shutdown, not killed


async def _collect(engine, prompt: list[int], params: SamplingParams, doc_cache: str | None = None
                   ) -> tuple[list[int], str]:
    tokens, text = [], ""
    async for out in engine.generate(prompt, params, doc_cache=doc_cache):
        tokens += out.token_ids
        text += out.text
    return tokens, text


def _wait_for(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_outputs_match_the_engine_stepped_in_this_process(process_engine: ProcessEngine, make_engine) -> None:
    tok = process_engine.tokenizer
    prompts = [tok.encode(q) for q in ("The capital of France is", "Rivers flow into the")]
    here = make_engine().generate(prompts, GREEDY)

    async def both() -> list[tuple[list[int], str]]:
        return await asyncio.gather(*(_collect(process_engine, p, GREEDY) for p in prompts))

    there = asyncio.run(both())
    assert [t for t, _ in there] == [r.token_ids for r in here]
    assert [s for _, s in there] == [r.text for r in here]
    assert process_engine.info.max_model_len > 0 and process_engine.info.device == "cpu"
    figures = process_engine.snapshot()  # sent before the outputs that finished the requests
    assert figures.generation_tokens >= sum(len(t) for t, _ in there)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread nice values are Linux's")
def test_every_thread_of_the_engine_process_runs_at_its_lower_priority(process_engine: ProcessEngine) -> None:
    asyncio.run(_collect(process_engine, [1, 2, 3, 4], GREEDY))  # its compute threads exist by now
    pid = process_engine.process.pid
    threads = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    assert len(threads) >= 2
    assert {tid: os.getpriority(os.PRIO_PROCESS, tid) for tid in threads} == dict.fromkeys(threads, ENGINE_NICE)
    assert os.getpriority(os.PRIO_PROCESS, 0) == ENGINE_NICE - 3  # the server's side keeps its own


def test_a_request_the_engine_refuses_fails_its_stream(process_engine: ProcessEngine) -> None:
    prompt = process_engine.tokenizer.encode("Hello there")

    with pytest.raises(RequestError, match="unknown doc_cache mode"):  # raised by add_request, over there
        asyncio.run(_collect(process_engine, prompt, GREEDY, doc_cache="sideways"))
    assert process_engine.num_in_flight == 0


def test_closing_a_stream_aborts_its_request_and_frees_its_blocks(process_engine: ProcessEngine) -> None:
    """The abort crosses the pipe: the engine process lets go of the request and its KV blocks."""
    prompt = process_engine.tokenizer.encode("Tell me a very long story about the sea. " * 20)
    long = SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)

    async def start_then_leave() -> None:
        stream = process_engine.generate(prompt, long)
        await anext(stream)
        assert _wait_for(lambda: process_engine.snapshot().num_running == 1)
        assert process_engine.snapshot().kv_usage > 0
        await stream.aclose()

    asyncio.run(start_then_leave())
    assert _wait_for(lambda: process_engine.snapshot().num_running == 0)
    figures = process_engine.snapshot()
    assert figures.kv_usage == 0 and figures.generation_tokens < 1000  # it did not run its 400 tokens


def test_a_model_that_cannot_load_is_reported_in_one_line(model_cache_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.gguf"
    with pytest.raises(ApplianceError) as raised:
        ProcessEngine.start(reference_config(model_cache_dir, model=str(missing)))
    assert str(missing) in str(raised.value) and "\n" not in str(raised.value)
