"""POST /api/ask: a question over one collection, answered with numbered sources and checked citations, as a
turn of a saved conversation (`conversation_id` continues one; without it a new one starts).

`stream: true` answers with SSE events `sources`, `token`, `citations` (with `evidence`), `done`; otherwise one
JSON body `{answer, conversation_id, turn, retrieval_query, citations, evidence, sources, usage, timings, kv}`
(shapes in `appliance/rag/answer_json.py`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from pydantic import Field

from appliance.engine.sampling import SamplingParams
from appliance.errors import ApplianceError
from appliance.rag.answer_json import Answer, citations_json, collect, done_json, sources_json
from appliance.rag.evidence import evidence_json
from appliance.rag.pipeline import CitationsEvent, DoneEvent, TokenEvent
from appliance.server.answers import stream_error
from appliance.server.conversation_turns import open_turn
from appliance.server.deps import AppState, Principal, generating_principal, get_state
from appliance.server.limits import bounded_max_tokens
from appliance.server.schemas import SSE_RESPONSE, DocCacheMode, RequestModel
from appliance.server.schemas_filters import FiltersIn, search_filters

router = APIRouter()


class AskRequest(RequestModel):
    question: str = Field(min_length=1, max_length=4000)
    collection: str = Field(min_length=1, max_length=64)
    k: int = Field(5, ge=1, le=20)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1, le=32768, description="default 256; at most APPLIANCE_MAX_TOKENS_LIMIT")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    doc_cache: DocCacheMode | None = Field(None, description="document KV cache mode; default APPLIANCE_DOC_CACHE")
    conversation_id: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
                                        description="continue this saved conversation (omitted: start a new one)")
    filters: FiltersIn | None = Field(None, description="only documents passing these may be retrieved (this "
                                      "question only; a follow-up gives its own)")


@router.post("/api/ask", response_model=None, responses=SSE_RESPONSE)
async def ask(body: AskRequest, state: AppState = Depends(get_state),
              principal: Principal = Depends(generating_principal)) -> dict | StreamingResponse:
    params = SamplingParams(max_tokens=bounded_max_tokens(state, body.max_tokens, 256), temperature=body.temperature)
    answer = await open_turn(state, principal, body.question, body.collection, body.k, params, body.doc_cache,
                             body.conversation_id, search_filters(body.filters))
    if body.stream:
        return StreamingResponse(_sse(answer), media_type="text/event-stream")
    return await collect(answer)


async def _sse(answer: Answer) -> AsyncIterator[str]:
    def frame(name: str, data: object) -> str:
        return f"event: {name}\ndata: {json.dumps(data)}\n\n"

    yield frame("sources", {"sources": sources_json(answer.sources), "conversation_id": answer.conversation_id,
                            "retrieval_query": answer.sources.retrieval_query})
    try:
        async for event in answer.events:
            if isinstance(event, TokenEvent):
                yield frame("token", {"text": event.text})
            elif isinstance(event, CitationsEvent):
                yield frame("citations", {"citations": citations_json(event.citations),
                                          "evidence": evidence_json(event.evidence)})
            elif isinstance(event, DoneEvent):
                yield frame("done", done_json(event))
    except ApplianceError as exc:
        yield frame("error", stream_error(exc))
