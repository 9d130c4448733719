"""POST /api/ask: a question over one collection, answered with numbered sources and checked citations."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import asdict

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from appliance.engine.sampling import SamplingParams
from appliance.rag.citations import Citation
from appliance.rag.pipeline import AskEvent, AskPipeline, CitationsEvent, DoneEvent, SourcesEvent, TokenEvent
from appliance.server.deps import AppState, Principal, current_principal, get_state
from appliance.server.errors import ApiError
from appliance.server.schemas_retrieval import retrieval_of, service_errors

router = APIRouter()


class AskRequest(BaseModel):
    question: str = Field(min_length=1, max_length=4000)
    collection: str = Field(min_length=1, max_length=64)
    k: int = Field(5, ge=1, le=20)
    stream: bool = False
    max_tokens: int = Field(256, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0.0, le=2.0)


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
        "kv": {"tokens_computed": d["tokens_computed"], "tokens_reused": d["tokens_reused"]},
    }


def pipeline_of(state: AppState) -> AskPipeline:
    if state.engine is None:
        raise ApiError(503, "model_unavailable", "the model is still loading", {"Retry-After": "5"})
    pipeline = state.extras.get("ask")
    if pipeline is None:
        pipeline = state.extras["ask"] = AskPipeline(state.engine, retrieval_of(state))
    return pipeline


@router.post("/api/ask", response_model=None)
async def ask(body: AskRequest, state: AppState = Depends(get_state),
              principal: Principal = Depends(current_principal)) -> dict | StreamingResponse:
    if not principal.can_read(body.collection):
        raise ApiError(403, "forbidden", f"this key cannot read collection {body.collection!r}")
    params = SamplingParams(max_tokens=body.max_tokens, temperature=body.temperature)
    events = pipeline_of(state).ask(body.question, [body.collection], body.k, params)
    with service_errors():
        sources = await anext(events)  # retrieval errors (unknown collection, ...) become JSON errors here
    assert isinstance(sources, SourcesEvent)
    if body.stream:
        return StreamingResponse(_sse(sources, events), media_type="text/event-stream")
    result: dict = {"sources": sources_json(sources)}
    async for event in events:
        if isinstance(event, CitationsEvent):
            result["citations"] = citations_json(event.citations)
        elif isinstance(event, DoneEvent):
            result = {"answer": event.answer, **result, **done_json(event)}
    return result


async def _sse(sources: SourcesEvent, events: AsyncIterator[AskEvent]) -> AsyncIterator[str]:
    def frame(name: str, data: object) -> str:
        return f"event: {name}\ndata: {json.dumps(data)}\n\n"

    yield frame("sources", {"sources": sources_json(sources)})
    async for event in events:
        if isinstance(event, TokenEvent):
            yield frame("token", {"text": event.text})
        elif isinstance(event, CitationsEvent):
            yield frame("citations", {"citations": citations_json(event.citations)})
        elif isinstance(event, DoneEvent):
            yield frame("done", done_json(event))
