"""Conversations through the HTTP API: follow-ups that keep their context and reuse the earlier turns' KV,
saved turns, feedback exported as a golden set, and clear errors (real model, real server)."""

from __future__ import annotations

import json
import time

import httpx

from tests.server.conftest import Server
from tests.server.test_ask_api import _events

SERVER_SETTINGS = {"conversation_history_tokens": 2048}
BLOCK = 16  # the engine's block size: the prefix cache reuses whole blocks


def _ask(server: Server, question: str, conversation_id: str | None = None, collection: str = "space",
         max_tokens: int = 24) -> dict:
    body = {"question": question, "collection": collection, "k": 2, "max_tokens": max_tokens}
    if conversation_id:
        body["conversation_id"] = conversation_id
    r = httpx.post(f"{server.url}/api/ask", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def _as_answered(items: list[dict]) -> list[dict]:
    """Saved sources or citations as the answer gave them (without the `gone` mark reading them adds)."""
    assert all(item["gone"] is False for item in items)
    return [{k: v for k, v in item.items() if k != "gone"} for item in items]


def test_a_follow_up_is_saved_in_its_conversation_and_reuses_the_first_turn(rag_server: Server) -> None:
    with httpx.stream("POST", f"{rag_server.url}/api/ask", timeout=120, json={
            "question": "What is the tallest volcano on Mars?", "collection": "space", "k": 2, "max_tokens": 24,
            "stream": True}) as r:
        assert r.status_code == 200
        events = list(_events(r))
    sources, done = events[0][1], events[-1][1]
    assert events[0][0] == "sources" and events[-1][0] == "done"
    conversation_id = sources["conversation_id"]
    assert conversation_id and done["conversation_id"] == conversation_id and done["turn"] == 1
    assert done["retrieval_query"] == "What is the tallest volcano on Mars?" and done["rewrite"] == "none"

    second = _ask(rag_server, "How high is it?", conversation_id)
    assert (second["conversation_id"], second["turn"]) == (conversation_id, 2)
    assert second["rewrite"] in ("model", "fallback") and second["retrieval_query"] != "How high is it?"
    assert second["turns_in_prompt"] == 1
    # the first turn's prompt and answer come from the prefix cache: only the new turn is computed
    first_tokens = done["usage"]["prompt_tokens"] + done["usage"]["completion_tokens"] - 1  # last token never fed
    assert second["kv"]["tokens_reused"] >= first_tokens // BLOCK * BLOCK
    assert second["kv"]["tokens_computed"] <= second["usage"]["prompt_tokens"] - first_tokens // BLOCK * BLOCK
    assert second["usage"]["prompt_tokens"] > done["usage"]["prompt_tokens"]

    saved = httpx.get(f"{rag_server.url}/api/conversations/{conversation_id}").json()
    assert saved["title"] == "What is the tallest volcano on Mars?" and saved["turn_count"] == 2
    first_turn, second_turn = saved["turns"]
    assert first_turn["question"] == "What is the tallest volcano on Mars?"
    assert _as_answered(first_turn["sources"]) == sources["sources"]
    assert second_turn["answer"] == second["answer"] and _as_answered(second_turn["citations"]) == second["citations"]
    assert second_turn["retrieval_query"] == second["retrieval_query"]
    assert second_turn["kv"] == second["kv"] and second_turn["timings"]["ttft_ms"] > 0


def test_list_rename_rate_export_and_delete(rag_server: Server) -> None:
    url = rag_server.url
    first = _ask(rag_server, "Which planet has the Great Red Spot?")
    conversation_id = first["conversation_id"]
    listed = httpx.get(f"{url}/api/conversations").json()["conversations"]
    assert listed[0]["conversation_id"] == conversation_id  # newest first
    renamed = httpx.patch(f"{url}/api/conversations/{conversation_id}", json={"title": "  Jupiter   storms "})
    assert renamed.status_code == 200 and renamed.json()["title"] == "Jupiter storms"

    rated = httpx.post(f"{url}/api/conversations/{conversation_id}/turns/1/feedback", json={"rating": "up"})
    assert rated.status_code == 200 and rated.json()["rating"] == "up"
    exported = httpx.get(f"{url}/api/admin/feedback", params={"format": "jsonl"})
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in exported.text.splitlines()]
    line = next(x for x in lines if x["conversation_id"] == conversation_id)
    assert line["question"] == "Which planet has the Great Red Spot?" and line["collection"] == "space"
    assert line["expected_answer"] == first["answer"] and line["rating"] == "up"
    supported = {c["chunk_id"] for c in first["citations"] if c["kind"] == "cited" and c["supported"]}
    assert set(line["expected_chunk_ids"]) == supported

    fix = {"rating": "down", "comment": "Jupiter."}  # a down rating's comment is the expected answer
    assert httpx.post(f"{url}/api/conversations/{conversation_id}/turns/1/feedback", json=fix).status_code == 200
    lines = httpx.get(f"{url}/api/admin/feedback", params={"format": "json"}).json()["feedback"]
    line = next(x for x in lines if x["conversation_id"] == conversation_id)
    assert (line["expected_answer"], line["expected_chunk_ids"]) == ("Jupiter.", [])
    got = httpx.get(f"{url}/api/conversations/{conversation_id}").json()
    assert got["turns"][0]["feedback"]["comment"] == "Jupiter."

    assert httpx.delete(f"{url}/api/conversations/{conversation_id}").status_code == 200
    assert httpx.get(f"{url}/api/conversations/{conversation_id}").status_code == 404
    assert all(x["conversation_id"] != conversation_id
               for x in httpx.get(f"{url}/api/admin/feedback", params={"format": "json"}).json()["feedback"])


def test_bad_requests_are_clear_errors_and_save_nothing(rag_server: Server) -> None:
    url = rag_server.url
    before = len(httpx.get(f"{url}/api/conversations").json()["conversations"])
    r = httpx.post(f"{url}/api/ask", json={"question": "Hi?", "collection": "space", "conversation_id": "nope"})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
    r = httpx.post(f"{url}/api/ask", json={"question": "Hi?", "collection": "space", "conversation_id": "../x"})
    assert r.status_code == 422
    conversation_id = _ask(rag_server, "How long does the Moon take to orbit the Earth?", max_tokens=8)[
        "conversation_id"]
    r = httpx.post(f"{url}/api/ask", json={"question": "And bread?", "collection": "kitchen",
                                          "conversation_id": conversation_id})
    assert r.status_code == 409 and "space" in r.json()["error"]["message"]
    feedback = f"{url}/api/conversations/{conversation_id}/turns"
    assert httpx.post(f"{feedback}/9/feedback", json={"rating": "up"}).status_code == 404
    assert httpx.post(f"{feedback}/1/feedback", json={"rating": "great"}).status_code == 422
    assert httpx.patch(f"{url}/api/conversations/{conversation_id}", json={"title": ""}).status_code == 422
    assert httpx.get(f"{url}/api/conversations/{conversation_id}").json()["turn_count"] == 1
    assert len(httpx.get(f"{url}/api/conversations").json()["conversations"]) == before + 1


def test_a_deleted_document_leaves_the_answer_readable_and_its_citations_marked_gone(rag_server: Server) -> None:
    url = rag_server.url
    assert httpx.post(f"{url}/api/admin/collections", json={"name": "conv-gone"}).status_code == 201
    text = b"# Comets\n\nHalley's Comet returns every 76 years. Its last visit was in 1986."
    job = httpx.post(f"{url}/api/admin/collections/conv-gone/documents", files={"files": ("comets.md", text)}).json()
    deadline = time.monotonic() + 60
    while httpx.get(f"{url}/api/admin/jobs/{job['job_id']}").json()["state"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    answer = _ask(rag_server, "How often does Halley's Comet return?", collection="conv-gone")
    doc_id = answer["sources"][0]["doc_id"]
    assert httpx.delete(f"{url}/api/admin/collections/conv-gone/documents/{doc_id}").status_code == 200
    turn = httpx.get(f"{url}/api/conversations/{answer['conversation_id']}").json()["turns"][0]
    assert turn["answer"] == answer["answer"] and turn["sources"][0]["text"].startswith("# Comets")
    assert all(s["gone"] for s in turn["sources"]) and all(c["gone"] for c in turn["citations"])
    follow_up = _ask(rag_server, "When was its last visit?", answer["conversation_id"], collection="conv-gone")
    assert follow_up["turn"] == 2  # the conversation goes on without the deleted passage


def test_rag_chat_answers_the_last_message_with_the_earlier_ones(rag_server: Server) -> None:
    messages = [{"role": "user", "content": "What is the tallest volcano on Mars?"},
                {"role": "assistant", "content": "Olympus Mons [1]."},
                {"role": "user", "content": "How high is it?"}]
    rag = {"collection": "space", "k": 2}
    r = httpx.post(f"{rag_server.url}/v1/chat/completions", timeout=120,
                   json={"messages": messages, "max_tokens": 16, "rag": rag})
    assert r.status_code == 200, r.text
    alone = httpx.post(f"{rag_server.url}/v1/chat/completions", timeout=120,
                       json={"messages": messages[-1:], "max_tokens": 16, "rag": rag}).json()
    body = r.json()
    assert body["retrieval_query"] != "How high is it?" and alone["retrieval_query"] == "How high is it?"
    earlier = len(rag_server.engine.tokenizer.encode("What is the tallest volcano on Mars?Olympus Mons [1]."))
    assert body["usage"]["prompt_tokens"] >= alone["usage"]["prompt_tokens"] + earlier - 2


def test_the_feedback_export_is_a_golden_set_appliance_eval_reads(rag_server: Server, tmp_path) -> None:
    from appliance.evaluation.golden import load_golden

    first = _ask(rag_server, "Which planet has a faint ring system?")
    url = f"{rag_server.url}/api/conversations/{first['conversation_id']}/turns/1/feedback"
    assert httpx.post(url, json={"rating": "up"}).status_code == 200
    golden = tmp_path / "golden.jsonl"
    golden.write_text(httpx.get(f"{rag_server.url}/api/admin/feedback").text)
    items = {item.question: item for item in load_golden(golden, "space").items}
    item = items["Which planet has a faint ring system?"]
    assert item.expected_answer == first["answer"]
    assert set(item.expected_chunk_ids) == {c["chunk_id"] for c in first["citations"]
                                            if c["kind"] == "cited" and c["supported"]}


def test_earlier_turns_give_way_to_the_context_the_new_turn_needs(make_engine, loaded_model, rag_data_dir) -> None:
    """The history budget is also bounded by the context left beside the new turn and its longest answer: with a
    short context the oldest turns are dropped, and the prompt still fits."""
    import asyncio

    from appliance.engine.async_engine import AsyncEngine
    from appliance.engine.sampling import SamplingParams
    from appliance.rag.history import History
    from appliance.rag.pipeline import AskPipeline, DoneEvent
    from appliance.rag.prompt import HistoryTurn
    from retrieval.service import RetrievalService

    tok = loaded_model.tokenizer
    filler = "The probe reported dust storms and clear skies over the plains. " * 12
    turns = tuple(HistoryTurn((), f"Question {i} about Mars?", filler, tuple(tok.encode(filler))) for i in range(4))
    service = RetrievalService.open(rag_data_dir, tok, chunk_tokens=128)
    engine = AsyncEngine(make_engine(max_model_len=700))
    try:
        pipeline = AskPipeline(engine, service)

        async def done(budget: int) -> DoneEvent:
            events = pipeline.ask("How tall is it?", ["space"], 2, SamplingParams(max_tokens=16), None,
                                  History(turns, {}, budget))
            return [e async for e in events if isinstance(e, DoneEvent)][0]

        roomy, none = asyncio.run(done(10_000)), asyncio.run(done(0))
    finally:
        engine.close()
        service.close()
    assert none.turns_in_prompt == 0 and 0 < roomy.turns_in_prompt < len(turns)
    assert roomy.prompt_tokens + 16 <= 700 < roomy.prompt_tokens + 16 + 100 * (len(turns) - roomy.turns_in_prompt)
