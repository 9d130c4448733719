"""OpenAI-compatible endpoints: /v1/models and /v1/chat/completions (stream and non-stream)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from appliance.engine.async_engine import AsyncEngine
from appliance.engine.outputs import RequestOutput
from appliance.engine.sampling import SamplingParams
from appliance.engine.tokenizer import ChatMessage
from appliance.server.deps import AppState, Principal, current_principal, get_state
from appliance.server.errors import ApiError
from appliance.server.schemas import ChatCompletionRequest

router = APIRouter(prefix="/v1")


def _engine(state: AppState) -> AsyncEngine:
    if state.engine is None:
        raise ApiError(503, "model_unavailable", "the model is still loading", {"Retry-After": "5"})
    return state.engine


@router.get("/models")
def list_models(state: AppState = Depends(get_state), _: Principal = Depends(current_principal)) -> dict:
    return {"object": "list", "data": [
        {"id": state.model_name, "object": "model", "created": 0, "owned_by": "appliance"}]}


def _usage(out: RequestOutput) -> dict:
    return {"prompt_tokens": out.num_prompt_tokens, "completion_tokens": out.num_output_tokens,
            "total_tokens": out.num_prompt_tokens + out.num_output_tokens,
            "prompt_tokens_details": {"cached_tokens": out.num_cached_tokens}}


@router.post("/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, state: AppState = Depends(get_state),
                           _: Principal = Depends(current_principal)) -> dict | StreamingResponse:
    engine = _engine(state)
    messages = [ChatMessage(m.role, m.text()) for m in body.messages]
    prompt = engine.tokenizer.apply_chat_template(messages)
    params = SamplingParams(
        max_tokens=body.max_completion_tokens or body.max_tokens or 512, temperature=body.temperature,
        top_p=body.top_p, top_k=body.top_k, seed=body.seed, stop=body.stop_list())
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    stream = engine.generate(prompt, params)
    if body.stream:
        first = await anext(stream)  # errors (queue full, bad prompt) become JSON errors before streaming
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_sse(first, stream, completion_id, created, state.model_name, include_usage),
                                 media_type="text/event-stream")
    text, last = "", None
    async for out in stream:
        text += out.text
        last = out
    assert last is not None
    return {"id": completion_id, "object": "chat.completion", "created": created, "model": state.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": last.finish_reason}],
            "usage": _usage(last)}


async def _sse(first: RequestOutput, rest: AsyncIterator[RequestOutput], completion_id: str, created: int,
               model: str, include_usage: bool) -> AsyncIterator[str]:
    def chunk(delta: dict, finish: str | None, usage: dict | None = None) -> str:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if usage is None else [],
                "usage": usage}
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""}, None)
    out = first
    while True:
        if out.text or out.finished:
            yield chunk({"content": out.text} if out.text else {}, out.finish_reason)
        if out.finished:
            break
        out = await anext(rest)
    if include_usage:
        yield chunk({}, None, _usage(out))
    yield "data: [DONE]\n\n"
