"""The document cache through the HTTP API: per-request modes, accounting, metrics, invalidation on delete."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from appliance.config import Settings
from appliance.engine.async_engine import AsyncEngine
from appliance.server.app import create_app
from retrieval.service import RetrievalService
from tests.server.conftest import Server, served

PAGES = {
    "tea.md": "# Tea\n\nGreen tea is steeped at 80 degrees for two minutes. Black tea takes boiling water.",
    "coffee.md": "# Coffee\n\nEspresso is brewed under nine bars of pressure in about 25 seconds.",
}


@pytest.fixture(scope="module")
def server(make_engine, loaded_model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("doc-cache-api")
    for name, text in PAGES.items():
        (root / name).write_text(text)
    service = RetrievalService.open(root / "data", loaded_model.tokenizer, chunk_tokens=128)
    assert service.ingest_paths("drinks", [root / name for name in PAGES]).state == "done"
    engine = make_engine(data_dir=root / "data", max_num_seqs=4)
    app = create_app(Settings(data_dir=root / "data"), AsyncEngine(engine), "smollm2", retrieval=service)
    with served(app) as url:
        yield Server(url, app, engine)
    service.close()


def ask(url: str, question: str, mode: str | None) -> dict:
    body = {"question": question, "collection": "drinks", "k": 2, "max_tokens": 4, "doc_cache": mode}
    response = httpx.post(url + "/api/ask", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


def test_modes_are_chosen_per_request_and_accounted(server: Server) -> None:
    first = ask(server.url, "How hot should the water be for green tea?", "blend")
    assert first["kv"]["mode"] == "blend" and first["kv"]["tokens_encoded"] > 0
    second = ask(server.url, "How long does an espresso take?", "reuse")
    kv = second["kv"]
    assert kv["mode"] == "reuse" and kv["tokens_encoded"] == 0 and kv["tokens_recomputed"] == 0
    assert kv["tokens_reused"] >= first["kv"]["tokens_encoded"]
    assert kv["tokens_reused"] + kv["tokens_computed"] == second["usage"]["prompt_tokens"]
    assert ask(server.url, "Is black tea made with boiling water?", None)["kv"]["mode"] == "exact"
    repeat = ask(server.url, "How hot should the water be for green tea?", "blend")  # the same passages
    assert repeat["kv"]["tokens_encoded"] == 0 and repeat["kv"]["tokens_reused"] > first["kv"]["tokens_reused"]
    metrics = httpx.get(server.url + "/metrics").text

    def total(name: str) -> float:
        return next(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(name + "_total"))
    assert total("rag_doc_cache_hits") >= 2
    assert total("rag_doc_cache_prefix_hits") >= server.engine.config.block_size  # the repeat's blended blocks
    assert 'rag_doc_cache_bytes{model_name="smollm2"}' in metrics
    bad = httpx.post(server.url + "/api/ask", json={"question": "q", "collection": "drinks", "doc_cache": "fast"})
    assert bad.status_code == 422


def test_deleting_a_document_drops_its_cached_chunks(server: Server) -> None:
    ask(server.url, "How hot should the water be for green tea?", "reuse")
    docs = httpx.get(server.url + "/api/admin/collections/drinks/documents").json()["documents"]
    tea = next(d["doc_id"] for d in docs if d["title"].lower().startswith("tea"))
    cache = server.engine.doc_cache
    assert any(tea in e.doc_ids for e in cache.tier.entries.values())
    assert httpx.delete(f"{server.url}/api/admin/collections/drinks/documents/{tea}").status_code == 200
    deadline = time.monotonic() + 30
    while any(tea in e.doc_ids for e in cache.tier.entries.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(tea in e.doc_ids for e in cache.tier.entries.values())
    assert cache.disk is not None
    assert cache.disk.invalidate(tea) == 0  # its files were already gone
    assert any(Path(p).exists() for p in cache.disk.root.glob("*/*.safetensors"))  # the coffee chunk stays
