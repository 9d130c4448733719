"""The OpenAI-compatible API over a real ingested collection, driven by the official `openai` client."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest

from tests.server.conftest import Server


@pytest.fixture
def client(rag_server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{rag_server.url}/v1", api_key="unused", max_retries=0)


def _passages_ok(citations: list[dict], sources: list[dict], k: int) -> None:
    assert 1 <= len(sources) <= k
    by_n = {s["n"]: s for s in sources}
    for c in citations:
        assert 1 <= c["n"] <= k and by_n[c["n"]]["chunk_id"] == c["chunk_id"]


def test_chat_with_rag_returns_citations(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model="smollm2", temperature=0, max_tokens=48,
        messages=[{"role": "system", "content": "ignored by RAG"},
                  {"role": "user", "content": "What is the Great Red Spot?"}],
        extra_body={"rag": {"collection": "space", "k": 2}})
    assert resp.choices[0].message.content.strip()
    extra = resp.model_extra
    assert "Jupiter" in {s["title"] for s in extra["sources"]}
    assert extra["citations"]
    _passages_ok(extra["citations"], extra["sources"], 2)
    assert resp.usage.prompt_tokens > 50 and 0 < resp.usage.completion_tokens <= 48


def test_chat_with_rag_streams_then_sends_citations_last(client: openai.OpenAI) -> None:
    question = [{"role": "user", "content": "What is the Great Red Spot?"}]
    whole = client.chat.completions.create(model="smollm2", temperature=0, max_tokens=48, messages=question,
                                           extra_body={"rag": {"collection": "space", "k": 2}})
    chunks = list(client.chat.completions.create(
        model="smollm2", temperature=0, max_tokens=48, messages=question, stream=True,
        stream_options={"include_usage": True}, extra_body={"rag": {"collection": "space", "k": 2}}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    final = chunks[-1]
    assert not final.choices and final.usage.completion_tokens == whole.usage.completion_tokens
    assert final.model_extra["citations"] == whole.model_extra["citations"]
    assert all("citations" not in (c.model_extra or {}) for c in chunks[:-1])


def test_completions_from_text_and_token_ids(client: openai.OpenAI, rag_server: Server) -> None:
    prompt = "The capital of France is"
    resp = client.completions.create(model="smollm2", prompt=prompt, max_tokens=8, temperature=0)
    assert resp.object == "text_completion" and resp.choices[0].text.strip()
    assert resp.usage.completion_tokens == 8 and resp.choices[0].finish_reason == "length"
    ids = rag_server.engine.tokenizer.encode(prompt)
    by_ids = client.completions.create(model="smollm2", prompt=ids, max_tokens=8, temperature=0)
    assert by_ids.choices[0].text == resp.choices[0].text
    assert by_ids.usage.prompt_tokens == len(ids) == resp.usage.prompt_tokens
    chunks = list(client.completions.create(model="smollm2", prompt=prompt, max_tokens=8, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == resp.choices[0].text
    assert chunks[-1].usage.completion_tokens == 8


def test_embeddings_single_and_batch(client: openai.OpenAI, rag_server: Server) -> None:
    one = client.embeddings.create(model="any", input="Olympus Mons is a volcano")
    assert one.model == "all-MiniLM-L6-v2" and len(one.data) == 1 and len(one.data[0].embedding) == 384
    assert one.usage.prompt_tokens > 0
    batch = client.embeddings.create(model="any", input=["volcano on Mars", "sourdough bread", "Olympus Mons"])
    vectors = np.array([d.embedding for d in sorted(batch.data, key=lambda d: d.index)])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    assert vectors[0] @ vectors[2] > vectors[1] @ vectors[2]  # real embeddings: related texts are closer
    b64 = httpx.post(f"{rag_server.url}/v1/embeddings",
                     json={"input": "Olympus Mons is a volcano", "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, one.data[0].embedding, atol=1e-5)


def test_rag_chat_errors_are_json(rag_server: Server) -> None:
    r = httpx.post(f"{rag_server.url}/v1/chat/completions", json={
        "messages": [{"role": "assistant", "content": "hi"}], "rag": {"collection": "space"}})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request"
    r = httpx.post(f"{rag_server.url}/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "hi"}], "rag": {"collection": "nope"}})
    assert r.status_code == 404
    r = httpx.post(f"{rag_server.url}/v1/embeddings", json={"input": []})
    assert r.status_code == 422
