"""POST /tokenize and /detokenize (vLLM's): the counts the other endpoints use, round trips, clear errors."""

from __future__ import annotations

import httpx

from tests.server.conftest import Server


def test_a_prompt_counts_as_completions_charges_it(rag_server: Server) -> None:
    url, tok = rag_server.url, rag_server.engine.tokenizer
    prompt = "Mars is the fourth planet. <|im_end|> stays plain text."
    body = httpx.post(f"{url}/tokenize", json={"prompt": prompt, "return_token_strs": True}).json()
    assert body["tokens"] == tok.encode(prompt) and body["count"] == len(body["tokens"])
    assert body["max_model_len"] == rag_server.engine.max_model_len
    assert "".join(body["token_strs"]).replace("Ġ", " ") == prompt
    done = httpx.post(f"{url}/v1/completions", json={"prompt": prompt, "max_tokens": 1, "temperature": 0}).json()
    assert done["usage"]["prompt_tokens"] == body["count"]


def test_messages_count_as_chat_charges_them(rag_server: Server) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a red planet."}]
    body = httpx.post(f"{rag_server.url}/tokenize", json={"messages": messages}).json()
    chat = httpx.post(f"{rag_server.url}/v1/chat/completions",
                      json={"messages": messages, "max_tokens": 1, "temperature": 0}).json()
    assert body["count"] == chat["usage"]["prompt_tokens"]
    text = httpx.post(f"{rag_server.url}/detokenize", json={"tokens": body["tokens"]}).json()["prompt"]
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>") and text.endswith("<|im_start|>assistant\n")
    bare = httpx.post(f"{rag_server.url}/tokenize", json={"messages": messages, "add_generation_prompt": False}).json()
    assert bare["count"] < body["count"]


def test_bad_requests_are_clear_errors(rag_server: Server) -> None:
    url = rag_server.url
    r = httpx.post(f"{url}/detokenize", json={"tokens": [1, 10**9]})
    assert r.status_code == 400 and "outside the vocabulary" in r.json()["error"]["message"]
    assert httpx.post(f"{url}/detokenize", json={"tokens": [-1]}).status_code == 400
    assert httpx.post(f"{url}/detokenize", json={"tokens": []}).json() == {"prompt": ""}
    both = {"prompt": "x", "messages": [{"role": "user", "content": "x"}]}
    assert httpx.post(f"{url}/tokenize", json=both).status_code == 422
    assert httpx.post(f"{url}/tokenize", json={}).status_code == 422
    assert httpx.post(f"{url}/tokenize", json={"prompt": 5}).status_code == 422
