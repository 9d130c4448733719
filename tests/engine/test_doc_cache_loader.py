"""Disk reads of the chunk tier run on the loader thread: a step never waits on a file, and a request waits in
the scheduler (while the others run) until its KV is in memory."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.engine.doc_cache.disk import DiskTier
from appliance.engine.doc_cache.loader import DiskLoader
from appliance.engine.engine import LLMEngine
from appliance.engine.sampling import SamplingParams
from appliance.rag.prompt import PromptBuilder
from retrieval.types import Chunk
from tests.engine.test_doc_cache import TEXTS, run

GREEDY = SamplingParams(max_tokens=8, temperature=0.0)
READ_SECONDS = 1.0  # each disk read is held this long, so that steps run while it is in flight


@pytest.fixture
def engine_for(make_engine: Callable[..., LLMEngine], tmp_path: Path) -> Callable[..., LLMEngine]:
    def make(**overrides: object) -> LLMEngine:
        return make_engine(data_dir=tmp_path, **overrides)
    return make


@pytest.fixture
def prompt(loaded_model):
    tok = loaded_model.tokenizer
    chunks = [Chunk(i + 1, f"doc-{i}", "c", 0, t, tok.encode(t), f"Doc {i}", f"doc{i}.md", None, ())
              for i, t in enumerate(TEXTS[:3])]
    return PromptBuilder(tok).build("Which module joins iterables?", chunks)


def slow_reads(disk: DiskTier, threads: list[str], result: Callable[[str], object] | None = None) -> None:
    """Record the thread of every read of `disk`, and hold each one READ_SECONDS."""
    read = disk.get

    def recorded(key: str):
        threads.append(threading.current_thread().name)
        time.sleep(READ_SECONDS)
        return read(key) if result is None else result(key)

    disk.get = recorded  # type: ignore[method-assign]


def test_a_disk_read_never_runs_on_the_engine_thread(engine_for, prompt) -> None:
    expected, first = run(engine_for(), prompt, "reuse", "first", GREEDY)  # encodes the chunks, writes them to disk
    assert first.num_encoded_tokens > 0
    engine = engine_for()  # a new engine: empty memory tier, the same files
    assert engine.doc_cache.disk is not None
    threads: list[str] = []
    slow_reads(engine.doc_cache.disk, threads)
    stream = engine.tokenizer.encode("Count slowly:")
    engine.add_request("stream", stream, SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True),
                       doc_cache="off")
    engine.step()
    started = time.monotonic()
    engine.add_request("reader", prompt.token_ids, GREEDY, prompt.layout(), "reuse")
    admitted_after = time.monotonic() - started
    steps_while_reading, got, out = 0, [], None
    reader = engine.requests["reader"]
    while out is None or not out.finished:
        step_started, reading = time.monotonic(), reader in engine.scheduler.waiting
        outputs = engine.step()
        if reading and reader in engine.scheduler.waiting:  # read in flight all step: the stream's decode alone
            assert time.monotonic() - step_started < READ_SECONDS  # (a step the read ends in also runs the reader)
            steps_while_reading += 1
        for o in outputs:
            if o.request_id == "reader":
                got += o.token_ids
                out = o
    assert admitted_after < READ_SECONDS
    assert threads and all(name.startswith(DiskLoader.THREAD_NAME) for name in threads)
    assert steps_while_reading > 1  # the stream decoded while the reader waited
    assert out.num_encoded_tokens == 0 and got == expected
    assert engine.doc_cache.stats.disk_hits == len(prompt.layout().chunks)


def test_a_chunk_whose_file_is_gone_when_read_is_encoded_instead(engine_for, prompt) -> None:
    expected, _ = run(engine_for(), prompt, "reuse", "first", GREEDY)
    engine = engine_for()
    assert engine.doc_cache.disk is not None
    slow_reads(engine.doc_cache.disk, [], result=lambda key: None)  # as if deleted after admission
    got, out = run(engine, prompt, "reuse", "reader", GREEDY)
    assert out.num_encoded_tokens > 0 and got == expected
    assert engine.doc_cache.stats.encoded_chunks == len(prompt.layout().chunks)
