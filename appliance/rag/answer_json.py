"""An answer as JSON, the same for `/api/ask` and `appliance ask --json`: its sources, citations and summary."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass

from appliance.rag.citations import Citation
from appliance.rag.pipeline import AskEvent, CitationsEvent, DoneEvent, SourcesEvent


@dataclass
class Answer:
    """An answer in progress: its numbered sources (already retrieved) and the rest of its events."""

    sources: SourcesEvent
    events: AsyncIterator[AskEvent]


def sources_json(event: SourcesEvent) -> list[dict]:
    return [{"n": n, "chunk_id": c.chunk_id, "doc_id": c.doc_id, "title": c.title, "source": c.source,
             "page": c.page, "heading_path": list(c.heading_path), "text": c.text}
            for n, c in enumerate(event.passages, start=1)]


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


def done_json(event: DoneEvent) -> dict:
    d = asdict(event)
    return {
        "finish_reason": d["finish_reason"],
        "usage": {"prompt_tokens": d["prompt_tokens"], "completion_tokens": d["completion_tokens"],
                  "total_tokens": d["prompt_tokens"] + d["completion_tokens"]},
        "timings": {key: d[key] for key in ("retrieval_ms", "queue_ms", "ttft_ms", "total_ms")},
        "kv": {key: d[key] for key in ("tokens_computed", "tokens_reused", "tokens_recomputed", "tokens_encoded")}
        | {"mode": d["doc_cache"]},
    }


async def collect(answer: Answer) -> dict:
    """The whole answer as the non-stream JSON of /api/ask: {answer, citations, sources, usage, timings, kv}."""
    result: dict = {"sources": sources_json(answer.sources)}
    async for event in answer.events:
        if isinstance(event, CitationsEvent):
            result["citations"] = citations_json(event.citations)
        elif isinstance(event, DoneEvent):
            result = {"answer": event.answer, **result, **done_json(event)}
    return result
