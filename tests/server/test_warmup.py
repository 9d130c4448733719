"""Start-up warm-up: before `/ready` turns 200 the embedder is loaded, the engine has run a RAG-shaped request
(the system prefix stays in the prefix cache), and `blend` has encoded and blended passages once, leaving none
of the filler's KV behind."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from appliance.config import Settings
from appliance.engine.async_engine import AsyncEngine
from appliance.rag.prompt import PromptBuilder
from appliance.server.app import create_app
from appliance.server.warmup import WARMUP_DOC, warmup_prompt
from retrieval.embed import shared_embedder
from retrieval.service import RetrievalService
from tests.server.conftest import Server, served

PAGE = "# Tea\n\nGreen tea is steeped at 80 degrees for two minutes. Black tea takes boiling water."


@pytest.fixture
def start(make_engine, loaded_model, tmp_path: Path) -> Iterator:
    """start(doc_cache, warmup_tokens) -> a served app over a one-page collection, with a fresh embedder."""
    (tmp_path / "tea.md").write_text(PAGE)
    shared_embedder.cache_clear()
    service = RetrievalService.open(tmp_path / "data", loaded_model.tokenizer, chunk_tokens=128)
    assert service.ingest_paths("drinks", [tmp_path / "tea.md"]).state == "done"
    shared_embedder.cache_clear()  # the ingest loaded it: a new service gets a new, unloaded one
    service.close()
    service = RetrievalService.open(tmp_path / "data", loaded_model.tokenizer, chunk_tokens=128)
    assert not service.embedder.ready_for_queries

    def start_(doc_cache: str, warmup_tokens: int, **engine: object) -> Server:
        engine = make_engine(data_dir=tmp_path / "data", doc_cache=doc_cache, max_num_seqs=4, **engine)
        settings = Settings(data_dir=tmp_path / "data", doc_cache=doc_cache, warmup_tokens=warmup_tokens)
        app = create_app(settings, AsyncEngine(engine), "smollm2", retrieval=service)
        return Server(stack.enter_context(served(app)), app, engine)

    with ExitStack() as stack:
        yield start_
    service.close()


def test_ready_means_warm(start, loaded_model) -> None:
    server = start("exact", 600)
    engine = server.engine
    assert engine.stats.tokens_computed >= 600  # the warm-up request ran before /ready
    assert not engine.has_unfinished()
    assert server.app.state.appliance.retrieval.embedder.ready_for_queries
    prefix = len(PromptBuilder(engine.tokenizer).prefix)
    body = {"question": "How hot for green tea?", "collection": "drinks", "k": 1, "max_tokens": 2}
    first = httpx.post(server.url + "/api/ask", json=body, timeout=120).json()
    assert first["kv"]["tokens_reused"] >= prefix // engine.config.block_size * engine.config.block_size > 0


def test_blend_warmup_leaves_no_filler_kv(start, tmp_path: Path) -> None:
    engine = start("blend", 600).engine
    prompt = warmup_prompt(PromptBuilder(engine.tokenizer), 600, engine.max_model_len)
    assert prompt is not None and engine.doc_cache.stats.encoded_chunks == len(prompt.passages)
    assert not any(WARMUP_DOC in e.doc_ids for e in engine.doc_cache.tier.entries.values())
    assert not list((tmp_path / "data" / "kvcache").glob("*/*/*.safetensors"))


def test_no_warmup_when_turned_off(start) -> None:
    engine = start("exact", 0).engine
    assert engine.stats.tokens_computed == 0


def test_warmup_fits_an_engine_with_little_kv(start) -> None:
    """An engine whose KV holds fewer tokens than the warm-up asks for still starts, warmed with what fits."""
    engine = start("exact", 1500, kv_blocks=40).engine  # 640 tokens
    assert engine.max_model_len == 640
    assert 256 < engine.stats.tokens_computed < 640


def test_the_warmup_prompt_keeps_to_the_limit(loaded_model) -> None:
    builder = PromptBuilder(loaded_model.tokenizer)
    full = warmup_prompt(builder, 1500, 10_000)
    assert full is not None and len(full.passages) == 5
    smaller = warmup_prompt(builder, 1500, len(full.token_ids) - 1)
    assert smaller is not None and len(smaller.passages) == 4
    assert warmup_prompt(builder, 1500, len(builder.prefix) + 10) is None
