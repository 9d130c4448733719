"""Answers over a collection, shared by `POST /api/ask` and `/v1/chat/completions` with `"rag"`: the access
check, the pipeline's first event, the JSON shapes of its events, and the usage/metrics bookkeeping.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import asdict, dataclass
from typing import cast

from appliance.engine.sampling import SamplingParams
from appliance.errors import ApplianceError, QueueFullError, RequestError
from appliance.rag.citations import Citation
from appliance.rag.pipeline import AskEvent, AskPipeline, CitationsEvent, DoneEvent, SourcesEvent
from appliance.server.admission import admission_of
from appliance.server.deps import AppState, Principal
from appliance.server.errors import ApiError
from appliance.server.metrics import engine_of, metrics_of
from appliance.server.schemas_retrieval import retrieval_of, service_errors
from appliance.server.usage import RequestUsage, UsageBook


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


def _pipeline(state: AppState) -> AskPipeline:
    pipeline = state.extras.get("ask")
    if pipeline is None:
        # the pipeline only needs `tokenizer` and `generate`, which the metered engine provides
        pipeline = state.extras["ask"] = AskPipeline(engine_of(state), retrieval_of(state))  # type: ignore[arg-type]
    return pipeline


async def open_answer(state: AppState, principal: Principal, question: str, collection: str, k: int,
                      params: SamplingParams, doc_cache: str | None = None) -> Answer:
    """Check that the caller may read `collection`, retrieve, and return the answer to stream. Its `done`
    event is charged to the caller's key and the collection (usage book, rag_* metrics) as it passes.

    Raises ApiError 403 (not the caller's collection), 404 (no such collection), 503 (still loading);
    QueueFullError (503) when the engine queue is full (`admission.py`).
    """
    if not principal.can_read(collection):
        raise ApiError(403, "forbidden", f"this key cannot read collection {collection!r}")
    pipeline = _pipeline(state)
    asked = cast(AsyncGenerator[AskEvent, None], pipeline.ask(question, [collection], k, params, doc_cache))
    events = await admission_of(state).hold(asked)  # fail fast when full, before retrieval
    with service_errors():
        sources = await anext(events)  # retrieval errors (unknown collection, ...) become JSON errors here
    assert isinstance(sources, SourcesEvent)
    return Answer(sources, _accounted(events, state, principal.key_id, collection))


async def _accounted(events: AsyncGenerator[AskEvent, None], state: AppState, key_id: str, collection: str
                     ) -> AsyncIterator[AskEvent]:
    async with aclosing(events):
        async for event in events:
            if isinstance(event, DoneEvent):
                usage = RequestUsage(event.tokens_computed, event.tokens_reused, event.completion_tokens,
                                     max(0.0, event.total_ms - event.retrieval_ms) / 1000)
                usage_of(state).record(key_id, collection, usage)
                metrics_of(state).observe_rag(event.retrieval_ms / 1000, event.tokens_reused, event.tokens_computed)
            yield event


def usage_of(state: AppState) -> UsageBook:
    return state.extras["usage"]


async def collect(answer: Answer) -> dict:
    """The whole answer as the non-stream JSON of /api/ask: {answer, citations, sources, usage, timings, kv}."""
    result: dict = {"sources": sources_json(answer.sources)}
    async for event in answer.events:
        if isinstance(event, CitationsEvent):
            result["citations"] = citations_json(event.citations)
        elif isinstance(event, DoneEvent):
            result = {"answer": event.answer, **result, **done_json(event)}
    return result


def stream_error(exc: ApplianceError) -> dict:
    """The JSON error sent inside a stream that fails after its headers went out."""
    kind = "overloaded" if isinstance(exc, QueueFullError) else (
        "invalid_request" if isinstance(exc, RequestError) else "engine_error")
    return {"error": {"type": kind, "message": str(exc)}}
