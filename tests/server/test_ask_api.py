"""POST /api/ask end to end: real model, real ingested collections, real server socket."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from appliance.server.deps import Principal, current_principal
from tests.server.conftest import DOCS, Server

SERVER_SETTINGS = {"max_queue": 2}
KITCHEN_DOCS = {name.removesuffix(".md").capitalize() for name in DOCS["kitchen"]}


def _events(response: httpx.Response) -> Iterator[tuple[str, dict]]:
    name = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            assert name is not None
            yield name, json.loads(line.removeprefix("data: "))


def _check_citations(sources: list[dict], citations: list[dict], k: int) -> None:
    assert 1 <= len(sources) <= k
    assert [s["n"] for s in sources] == list(range(1, len(sources) + 1))
    by_n = {s["n"]: s for s in sources}
    for c in citations:
        assert 1 <= c["n"] <= k and c["n"] in by_n
        source = by_n[c["n"]]
        assert (c["chunk_id"], c["doc_id"], c["title"], c["quote"]) == (
            source["chunk_id"], source["doc_id"], source["title"], source["text"])


def _check_evidence(sources: list[dict], evidence: list[dict]) -> None:
    """One quote (APPLIANCE_EVIDENCE_QUOTES=1), verbatim from the source it names, at the offsets it gives."""
    assert len(evidence) == 1
    by_n = {s["n"]: s for s in sources}
    for e in evidence:
        source = by_n[e["n"]]
        assert (e["chunk_id"], e["doc_id"], e["title"]) == (source["chunk_id"], source["doc_id"], source["title"])
        assert e["quote"] and source["text"][e["start"]:e["end"]] == e["quote"]


@pytest.fixture
def reader_of_space(rag_server: Server) -> Iterator[None]:
    overrides = rag_server.app.dependency_overrides
    overrides[current_principal] = lambda: Principal("reader-1", "reader", frozenset({"space"}))
    yield
    overrides.pop(current_principal)


def test_non_stream_answer_with_sources_and_valid_citations(rag_server: Server) -> None:
    r = httpx.post(f"{rag_server.url}/api/ask", timeout=60, headers={"X-Request-ID": "ask-test-1"},
                   json={"question": "How tall is Olympus Mons?", "collection": "space", "k": 3, "max_tokens": 48})
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "ask-test-1"
    body = r.json()
    assert set(body) >= {"answer", "citations", "sources", "usage", "timings", "kv"}
    assert body["answer"].strip()
    assert body["sources"][0]["title"] == "Mars"
    _check_citations(body["sources"], body["citations"], 3)
    _check_evidence(body["sources"], body["evidence"])
    assert body["usage"]["prompt_tokens"] == body["kv"]["tokens_computed"] + body["kv"]["tokens_reused"]
    assert 0 < body["usage"]["completion_tokens"] <= 48
    t = body["timings"]
    assert 0 < t["retrieval_ms"] < t["ttft_ms"] <= t["total_ms"]


def test_stream_events_in_order_with_valid_citations(rag_server: Server) -> None:
    body = {"question": "What is the Great Red Spot?", "collection": "space", "k": 2, "stream": True,
            "max_tokens": 48}
    with httpx.stream("POST", f"{rag_server.url}/api/ask", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = list(_events(r))
    names = [name for name, _ in events]
    assert names[0] == "sources" and names[-2:] == ["citations", "done"]
    assert set(names[1:-2]) == {"token"} and len(names) > 5  # really streamed, token by token
    sources = events[0][1]["sources"]
    assert "Jupiter" in {s["title"] for s in sources}
    citations = events[-2][1]["citations"]
    assert citations  # greedy answer restating the Jupiter passage: at least an inferred citation
    _check_citations(sources, citations, 2)
    _check_evidence(sources, events[-2][1]["evidence"])
    done = events[-1][1]
    assert done["evidence"] == events[-2][1]["evidence"]
    assert done["usage"]["completion_tokens"] > 0 and set(done["kv"]) == {
        "tokens_computed", "tokens_reused", "tokens_recomputed", "tokens_encoded", "mode"}


def test_reader_never_sees_another_collection(rag_server: Server, reader_of_space: None) -> None:
    url = rag_server.url
    r = httpx.post(f"{url}/api/ask", json={"question": "How is sourdough baked?", "collection": "kitchen"})
    assert r.status_code == 403 and r.json()["error"]["type"] == "forbidden"
    r = httpx.post(f"{url}/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "How is sourdough baked?"}], "rag": {"collection": "kitchen"}})
    assert r.status_code == 403
    # a question about the other collection's content, asked of its own collection, stays in its own
    body = httpx.post(f"{url}/api/ask", timeout=60, json={
        "question": "How is sourdough bread baked?", "collection": "space", "k": 5, "max_tokens": 24}).json()
    titles = {s["title"] for s in body["sources"]} | {c["title"] for c in body["citations"]}
    assert titles and not titles & KITCHEN_DOCS
    assert "sourdough" not in " ".join(s["text"] for s in body["sources"]).lower()


def test_unknown_collection_is_404(rag_server: Server) -> None:
    r = httpx.post(f"{rag_server.url}/api/ask", json={"question": "Anything?", "collection": "nope"})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"


def _hold_streams(url: str, n: int, opened: threading.Barrier, release: threading.Event) -> list[threading.Thread]:
    body = {"question": "Tell me everything about the Moon.", "collection": "space", "stream": True,
            "max_tokens": 400, "temperature": 1.0}

    def hold() -> None:
        with httpx.stream("POST", f"{url}/api/ask", json=body, timeout=60) as r:
            lines = r.iter_lines()
            next(line for line in lines if line == "event: token")
            opened.wait()
            release.wait(30)

    threads = [threading.Thread(target=hold) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


def test_queue_full_answers_503_at_once(rag_server: Server) -> None:
    opened, release = threading.Barrier(3, timeout=60), threading.Event()
    threads = _hold_streams(rag_server.url, 2, opened, release)  # max_queue is 2
    try:
        opened.wait()
        for stream in (False, True):
            started = time.perf_counter()
            r = httpx.post(f"{rag_server.url}/api/ask", timeout=10,
                           json={"question": "Which planet is red?", "collection": "space", "stream": stream})
            assert time.perf_counter() - started < 1.0
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["type"] == "overloaded"
    finally:
        release.set()
        for t in threads:
            t.join(30)


def test_dropped_stream_is_aborted_and_frees_its_blocks(rag_server: Server) -> None:
    engine = rag_server.engine
    deadline = time.monotonic() + 30
    while engine.num_running and time.monotonic() < deadline:  # let earlier tests' requests drain
        time.sleep(0.05)
    assert engine.num_running == 0
    total = engine.block_manager.num_blocks
    opened, release = threading.Barrier(2, timeout=60), threading.Event()
    (thread,) = _hold_streams(rag_server.url, 1, opened, release)
    opened.wait()
    assert engine.num_running == 1 and engine.block_manager.num_free_blocks < total
    release.set()  # the client closes the stream after its first tokens
    thread.join(10)
    dropped = time.monotonic()
    while (engine.num_running or engine.block_manager.num_free_blocks != total) and time.monotonic() - dropped < 1:
        time.sleep(0.01)
    assert engine.num_running == 0 and engine.num_waiting == 0
    assert engine.block_manager.num_free_blocks == total
    assert engine.stats.generation_tokens > 0
