"""The OpenAI-compatible API on a real server socket, driven by the official `openai` client."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import httpx
import openai
import pytest

from appliance.bench.sse_client import stream_completion
from appliance.config import Settings
from appliance.engine.async_engine import AsyncEngine
from appliance.server.app import create_app
from tests.server.conftest import served


@pytest.fixture(scope="module")
def base_url(make_engine, tmp_path_factory) -> Iterator[str]:
    engine = make_engine()
    settings = Settings(data_dir=tmp_path_factory.mktemp("srv"), max_queue=4)
    with served(create_app(settings, AsyncEngine(engine, max_queue=4), "smollm2")) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


def test_health_ready_and_models(base_url: str, client: openai.OpenAI) -> None:
    assert httpx.get(f"{base_url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{base_url}/ready").status_code == 200
    assert [m.id for m in client.models.list().data] == ["smollm2"]


def test_chat_completion_non_stream(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="smollm2", temperature=0, max_tokens=20,
                                          messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in resp.choices[0].message.content
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens > 10 and 0 < resp.usage.completion_tokens <= 20


def test_chat_completion_stream_matches_non_stream(client: openai.OpenAI) -> None:
    kwargs = dict(model="smollm2", temperature=0, max_tokens=16,
                  messages=[{"role": "user", "content": "Name three colors."}])
    whole = client.chat.completions.create(**kwargs)
    full = whole.choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 3  # really streamed
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason



def test_the_benchmarks_client_reads_the_stream_as_the_official_client_does(base_url: str,
                                                                             client: openai.OpenAI) -> None:
    """`appliance bench api`'s client (no HTTP library) on this server's real stream: one arrival a chunk with
    text, and the usage's token count, as the `openai` client sees them."""
    kwargs = dict(model="smollm2", temperature=0, max_tokens=12, messages=[{"role": "user", "content": "Count."}])
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    texts = sum(1 for c in chunks if c.choices and c.choices[0].delta.content)
    body = {**kwargs, "stream": True, "stream_options": {"include_usage": True}}
    times, tokens = asyncio.run(stream_completion(base_url, "/v1/chat/completions", body))
    assert (len(times), tokens) == (texts, chunks[-1].usage.completion_tokens)
    assert texts > 3 and times == sorted(times)

def test_ignore_eos_generates_through_the_end_of_the_answer(client: openai.OpenAI) -> None:
    """vLLM's `ignore_eos`: the short answer that stops by itself runs on to `max_tokens` when asked."""
    kwargs = dict(model="smollm2", temperature=0,
                  messages=[{"role": "user", "content": "What is the capital of France?"}])
    short = client.chat.completions.create(max_tokens=40, **kwargs)
    assert short.choices[0].finish_reason == "stop" and short.usage.completion_tokens < 30
    long = client.chat.completions.create(max_tokens=40, extra_body={"ignore_eos": True}, **kwargs)
    assert long.choices[0].finish_reason == "length" and long.usage.completion_tokens == 40


def test_second_identical_request_reuses_the_prefix(client: openai.OpenAI) -> None:
    kwargs = dict(model="smollm2", temperature=0, max_tokens=4,
                  messages=[{"role": "user", "content": "Tell me about the history of printing presses."}])
    client.chat.completions.create(**kwargs)
    again = client.chat.completions.create(**kwargs)
    assert again.usage.prompt_tokens_details.cached_tokens >= 16


def test_bad_requests_get_json_errors(base_url: str) -> None:
    r = httpx.post(f"{base_url}/v1/chat/completions", json={"messages": []})
    assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_request"
    r = httpx.post(f"{base_url}/v1/chat/completions", content=b"{not json",
                   headers={"content-type": "application/json"})
    assert r.status_code == 422 and "error" in r.json()
    r = httpx.post(f"{base_url}/v1/chat/completions",
                   json={"messages": [{"role": "user", "content": "x" * 60000}], "max_tokens": 1})
    assert r.status_code == 400 and "prompt" in r.json()["error"]["message"]
    r = httpx.post(f"{base_url}/v1/chat/completions",
                   json={"messages": [{"role": "user", "content": "hi"}], "temperature": -1})
    assert r.status_code == 422


def test_queue_bound_answers_503(base_url: str) -> None:
    body = {"messages": [{"role": "user", "content": "Count to one hundred."}], "max_tokens": 64}
    with httpx.Client(timeout=60) as http:
        results: list[int] = []

        def call() -> None:
            results.append(http.post(f"{base_url}/v1/chat/completions", json=body).status_code)

        threads = [threading.Thread(target=call) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results.count(200) >= 4 and 503 in results
