"""An answer as JSON, the same for `/api/ask` and `appliance ask --json`: its sources, citations and summary."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from appliance.rag.citations import Citation
from appliance.rag.evidence import evidence_json
from appliance.rag.grounding import FieldGrounding
from appliance.rag.pipeline import AskEvent, CitationsEvent, DoneEvent, GroundingEvent, SourcesEvent
from retrieval.types import Chunk


@dataclass
class Answer:
    """An answer in progress: its numbered sources (already retrieved) and the rest of its events."""

    sources: SourcesEvent
    events: AsyncIterator[AskEvent]
    conversation_id: str | None = None  # the saved conversation this answer is a turn of


def sources_json(event: SourcesEvent) -> list[dict]:
    return [passage_json(n, c) for n, c in zip(event.numbers, event.passages, strict=True)]


def passage_json(n: int, c: Chunk) -> dict:
    return {"n": n, "chunk_id": c.chunk_id, "doc_id": c.doc_id, "title": c.title, "source": c.source,
            "page": c.page, "heading_path": list(c.heading_path), "text": c.text}


def citations_json(citations: list[Citation]) -> list[dict]:
    """One entry per passage number used, with the answer sentences that cite (or are inferred from) it."""
    by_n: dict[int, dict] = {}
    for c in citations:
        entry = by_n.setdefault(c.n, {
            "n": c.n, "chunk_id": c.chunk.chunk_id, "doc_id": c.chunk.doc_id, "title": c.chunk.title,
            "page": c.chunk.page, "quote": c.chunk.text, "kind": c.kind, "supported": False, "sentences": []})
        entry["supported"] = entry["supported"] or c.supported
        if c.kind == "cited":
            entry["kind"] = "cited"
        entry["sentences"].append({"text": c.sentence, "kind": c.kind, "supported": c.supported,
                                   "overlap": round(c.overlap, 3)})
    return [by_n[n] for n in sorted(by_n)]


def grounding_json(fields: list[FieldGrounding] | None) -> dict | None:
    """A JSON answer's citations by JSON pointer: {pointer: {value, status, passages: [{n, chunk_id, doc_id,
    title, page, quote}]}}; None when the answer is not JSON."""
    if fields is None:
        return None
    return {f.pointer: {"value": f.value, "status": f.status, "passages": [
        {"n": s.n, "chunk_id": s.chunk.chunk_id, "doc_id": s.chunk.doc_id, "title": s.chunk.title,
         "page": s.chunk.page, "quote": s.quote} for s in f.sources]} for f in fields}


def citations_of(event: CitationsEvent | GroundingEvent) -> list[dict] | dict | None:
    """The `citations` of a response: by sentence for a prose answer, by JSON pointer for a JSON one."""
    return citations_json(event.citations) if isinstance(event, CitationsEvent) else grounding_json(event.fields)


def done_json(event: DoneEvent) -> dict:
    """The summary of an answer: `done` event of /api/ask (the caller adds the conversation's id and turn)."""
    e = event
    saved = {"conversation_id": e.conversation_id, "turn": e.turn} if e.conversation_id else {}
    return saved | {
        "finish_reason": e.finish_reason,
        "evidence": evidence_json(e.evidence),
        "retrieval_query": e.retrieval_query,
        "rewrite": e.rewrite,
        "turns_in_prompt": e.turns_in_prompt,
        "usage": {"prompt_tokens": e.prompt_tokens, "completion_tokens": e.completion_tokens,
                  "total_tokens": e.prompt_tokens + e.completion_tokens},
        "timings": {"rewrite_ms": e.rewrite_ms, "retrieval_ms": e.retrieval_ms, "queue_ms": e.queue_ms,
                    "ttft_ms": e.ttft_ms, "total_ms": e.total_ms},
        "kv": {"tokens_computed": e.tokens_computed, "tokens_reused": e.tokens_reused,
               "tokens_recomputed": e.tokens_recomputed, "tokens_encoded": e.tokens_encoded, "mode": e.doc_cache},
    }


async def collect(answer: Answer) -> dict:
    """The whole answer as the non-stream JSON of /api/ask: {answer, citations, evidence, sources, usage, timings,
    kv}."""
    result: dict = {"sources": sources_json(answer.sources), "retrieval_query": answer.sources.retrieval_query}
    if answer.conversation_id:
        result["conversation_id"] = answer.conversation_id
    async for event in answer.events:
        if isinstance(event, CitationsEvent | GroundingEvent):
            result["citations"] = citations_of(event)
        elif isinstance(event, DoneEvent):
            result = {"answer": event.answer, **result, **done_json(event)}
    return result
