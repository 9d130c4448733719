"""Answers over a collection, shared by `POST /api/ask` and `/v1/chat/completions` with `"rag"`: the access
check, the pipeline's first event and the usage/metrics bookkeeping (the JSON shapes: `rag/answer_json.py`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import cast

from appliance.engine.sampling import SamplingParams
from appliance.errors import ApplianceError, EngineUnavailableError, QueueFullError, RequestError
from appliance.rag.answer_json import Answer
from appliance.rag.answering import answer_options
from appliance.rag.history import History
from appliance.rag.pipeline import AskEvent, AskPipeline, DoneEvent, SourcesEvent
from appliance.server.deps import AppState, Principal, admission_of, engine_of, metrics_of
from appliance.server.errors import ApiError
from appliance.server.schemas_retrieval import retrieval_of, service_errors
from appliance.server.usage import RequestUsage, UsageBook
from retrieval.filters import SearchFilters


def _pipeline(state: AppState) -> AskPipeline:
    if state.ask is None:
        # the pipeline only needs `tokenizer` and `generate`, which the metered engine provides
        state.ask = AskPipeline(engine_of(state), retrieval_of(state),  # type: ignore[arg-type]
                                state.settings.followup_rewrite, answer_options(state.settings))
    return state.ask


async def open_answer(state: AppState, principal: Principal, question: str, collection: str, k: int,
                      params: SamplingParams, doc_cache: str | None = None, history: History | None = None,
                      filters: SearchFilters | None = None) -> Answer:
    """Check that the caller may read `collection`, retrieve (within `filters`), and return the answer to
    stream (a follow-up of `history`'s turns when given). Its `done` event is charged to the caller's key and
    the collection (usage book, rag_* metrics) as it passes.

    Raises ApiError 403 (not the caller's collection), 404 (no such collection), 503 (still loading);
    QueueFullError (503) when the engine queue is full (`admission.py`).
    """
    if not principal.can_read(collection):
        raise ApiError(403, "forbidden", f"this key cannot read collection {collection!r}")
    pipeline = _pipeline(state)
    asked = cast(AsyncGenerator[AskEvent, None], pipeline.ask(question, [collection], k, params, doc_cache,
                                                                           history, filters))
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
    assert state.usage is not None, "create_app makes the usage book"
    return state.usage


def stream_error(exc: ApplianceError) -> dict:
    """The JSON error sent inside a stream that fails after its headers went out."""
    kind = ("overloaded" if isinstance(exc, QueueFullError) else "invalid_request" if isinstance(exc, RequestError)
            else "engine_unavailable" if isinstance(exc, EngineUnavailableError) else "engine_error")
    return {"error": {"type": kind, "message": str(exc)}}
