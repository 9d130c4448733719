"""OpenAI-compatible endpoints: /v1/models, /v1/chat/completions (plain or RAG), /v1/completions.

Streams are SSE `data: {chunk}` lines ending with `data: [DONE]`; errors before the first byte are JSON
errors with their status, errors after it a `data: {"error": ...}` line. Embeddings: `openai_embeddings.py`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from appliance.engine.outputs import RequestOutput
from appliance.engine.sampling import SamplingParams
from appliance.engine.tokenizer import ChatMessage
from appliance.errors import ApplianceError
from appliance.rag.answer_json import Answer, citations_json, collect, sources_json
from appliance.rag.history import text_history
from appliance.rag.pipeline import CitationsEvent, DoneEvent, TokenEvent
from appliance.server.answers import open_answer, stream_error, usage_of
from appliance.server.deps import AppState, Principal, admission_of, current_principal, engine_of, get_state
from appliance.server.errors import ApiError
from appliance.server.limits import bounded_max_tokens
from appliance.server.schemas import SSE_RESPONSE, ChatCompletionRequest, CompletionRequest
from appliance.server.usage import RequestUsage

router = APIRouter(prefix="/v1")
DONE = "data: [DONE]\n\n"


@router.get("/models")
def list_models(state: AppState = Depends(get_state), _: Principal = Depends(current_principal)) -> dict:
    return {"object": "list", "data": [
        {"id": state.model_name, "object": "model", "created": 0, "owned_by": "appliance"}]}


@dataclass
class _Envelope:
    """The fields every response (or chunk) of one completion shares."""

    prefix: str
    kind: str  # the "object" field
    model: str
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.id = f"{self.prefix}-{uuid.uuid4().hex[:24]}"

    def body(self, choices: list[dict], **extra: object) -> dict:
        return {"id": self.id, "object": self.kind, "created": self.created, "model": self.model,
                "choices": choices, **extra}

    def sse(self, choices: list[dict], **extra: object) -> str:
        return f"data: {json.dumps(self.body(choices, **extra))}\n\n"


def _usage(prompt: int, completion: int, cached: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def _output_usage(out: RequestOutput) -> dict:
    return _usage(out.num_prompt_tokens, out.num_output_tokens, out.num_cached_tokens)


async def _charged(outputs: AsyncGenerator[RequestOutput, None], state: AppState, key_id: str
                   ) -> AsyncGenerator[RequestOutput, None]:
    """`outputs`, with the finished request charged to `key_id` in the usage book."""
    started = time.perf_counter()
    async with aclosing(outputs):
        async for out in outputs:
            if out.finished:
                usage_of(state).record(key_id, None, RequestUsage.of_output(out, time.perf_counter() - started))
            yield out


async def _start(state: AppState, principal: Principal, prompt: list[int], params: SamplingParams
                 ) -> tuple[RequestOutput, AsyncIterator[RequestOutput]]:
    """Submit and wait for the first output, so that queue-full and bad prompts become JSON errors."""
    charged = _charged(engine_of(state).generate(prompt, params), state, principal.key_id)
    outputs = await admission_of(state).hold(charged)
    return await anext(outputs), outputs


async def _rest(first: RequestOutput, rest: AsyncIterator[RequestOutput]) -> AsyncIterator[RequestOutput]:
    yield first
    if not first.finished:
        async for out in rest:
            yield out


async def _join(first: RequestOutput, rest: AsyncIterator[RequestOutput]) -> tuple[str, RequestOutput]:
    text, last = "", first
    async for out in _rest(first, rest):
        text, last = text + out.text, out
    return text, last


async def _sse(env: _Envelope, first: RequestOutput, rest: AsyncIterator[RequestOutput], lead: list[dict],
               choice: Callable[[str], dict], include_usage: bool) -> AsyncIterator[str]:
    """Chunks of a plain completion: `lead` choices, one per text delta, then usage when asked."""
    if lead:
        yield env.sse(lead)
    last = first
    try:
        async for out in _rest(first, rest):
            if out.text or out.finished:
                yield env.sse([{"index": 0, **choice(out.text), "finish_reason": out.finish_reason}])
            last = out
    except ApplianceError as exc:
        yield f"data: {json.dumps(stream_error(exc))}\n\n"
        return
    if include_usage:
        yield env.sse([], usage=_output_usage(last))
    yield DONE


@router.post("/chat/completions", response_model=None, responses=SSE_RESPONSE)
async def chat_completions(body: ChatCompletionRequest, state: AppState = Depends(get_state),
                           principal: Principal = Depends(current_principal)) -> dict | StreamingResponse:
    """A chat completion; with `"rag"`, the last user message answered from a collection, with citations, as a
    follow-up of the earlier user/assistant messages (retrieval searches for it rewritten with them)."""
    env = _Envelope("chatcmpl", "chat.completion.chunk" if body.stream else "chat.completion", state.model_name)
    params = body.sampling_params(bounded_max_tokens(state, body.max_completion_tokens or body.max_tokens, 512))
    if body.rag is not None:
        question = body.last_user_message()
        if not question:
            raise ApiError(400, "invalid_request", "a RAG chat needs a user message (the question)")
        history = text_history(body.earlier_turns(), engine_of(state).tokenizer,
                               state.settings.conversation_history_tokens)
        answer = await open_answer(state, principal, question, body.rag.collection, body.rag.k, params,
                                   body.rag.doc_cache, history)
        if body.stream:
            return StreamingResponse(_rag_sse(env, answer, body.include_usage), media_type="text/event-stream")
        result = await collect(answer)
        message = {"role": "assistant", "content": result["answer"]}
        usage = _usage(result["usage"]["prompt_tokens"], result["usage"]["completion_tokens"],
                       result["kv"]["tokens_reused"])
        return env.body([{"index": 0, "message": message, "finish_reason": result["finish_reason"]}],
                        usage=usage, citations=result["citations"], sources=result["sources"],
                        retrieval_query=result["retrieval_query"])
    engine = engine_of(state)
    prompt = engine.tokenizer.apply_chat_template([ChatMessage(m.role, m.text()) for m in body.messages])
    first, rest = await _start(state, principal, prompt, params)
    if body.stream:
        lead = [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
        return StreamingResponse(
            _sse(env, first, rest, lead, lambda t: {"delta": {"content": t} if t else {}}, body.include_usage),
            media_type="text/event-stream")
    text, last = await _join(first, rest)
    return env.body([{"index": 0, "message": {"role": "assistant", "content": text},
                      "finish_reason": last.finish_reason}], usage=_output_usage(last))


async def _rag_sse(env: _Envelope, answer: Answer, include_usage: bool) -> AsyncIterator[str]:
    """Chunks of a RAG answer: deltas, the finish, then one final chunk with citations and sources."""
    yield env.sse([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    citations: list[dict] = []
    try:
        async for event in answer.events:
            if isinstance(event, TokenEvent):
                yield env.sse([{"index": 0, "delta": {"content": event.text}, "finish_reason": None}])
            elif isinstance(event, CitationsEvent):
                citations = citations_json(event.citations)
            elif isinstance(event, DoneEvent):
                yield env.sse([{"index": 0, "delta": {}, "finish_reason": event.finish_reason}])
                usage = _usage(event.prompt_tokens, event.completion_tokens, event.tokens_reused)
                yield env.sse([], citations=citations, sources=sources_json(answer.sources),
                              retrieval_query=answer.sources.retrieval_query, usage=usage if include_usage else None)
    except ApplianceError as exc:
        yield f"data: {json.dumps(stream_error(exc))}\n\n"
        return
    yield DONE


@router.post("/completions", response_model=None, responses=SSE_RESPONSE)
async def completions(body: CompletionRequest, state: AppState = Depends(get_state),
                      principal: Principal = Depends(current_principal)) -> dict | StreamingResponse:
    """A text completion of a prompt string (encoded as plain text) or of a list of token ids."""
    prompt = engine_of(state).tokenizer.encode(body.prompt) if isinstance(body.prompt, str) else body.prompt
    env = _Envelope("cmpl", "text_completion", state.model_name)
    params = body.sampling_params(bounded_max_tokens(state, body.max_tokens, 16))
    first, rest = await _start(state, principal, prompt, params)
    if body.stream:
        return StreamingResponse(
            _sse(env, first, rest, [], lambda t: {"text": t, "logprobs": None}, body.include_usage),
            media_type="text/event-stream")
    text, last = await _join(first, rest)
    return env.body([{"index": 0, "text": text, "logprobs": None, "finish_reason": last.finish_reason}],
                    usage=_output_usage(last))
