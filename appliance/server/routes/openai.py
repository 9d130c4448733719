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
from dataclasses import dataclass, field, replace

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from appliance.engine.logprobs import TokenLogprobs
from appliance.engine.outputs import RequestOutput
from appliance.engine.sampling import SamplingParams
from appliance.errors import ApplianceError
from appliance.rag.answer_json import Answer, citations_of, collect, sources_json
from appliance.rag.history import text_history
from appliance.rag.pipeline import CitationsEvent, DoneEvent, GroundingEvent, TokenEvent
from appliance.server.answers import open_answer, stream_error, usage_of
from appliance.server.deps import AppState, Principal, admission_of, current_principal, engine_of, get_state
from appliance.server.errors import ApiError
from appliance.server.limits import bounded_max_tokens
from appliance.server.logprobs_json import chat_logprobs, completion_logprobs
from appliance.server.schemas import SSE_RESPONSE, ChatCompletionRequest, CompletionRequest
from appliance.server.tool_calls import chat_messages, parse_calls, plan_tools
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
    """Check the grammar, submit and wait for the first output, so that bad grammars, queue-full and bad
    prompts become JSON errors."""
    if params.grammar is not None:
        await engine_of(state).check_grammar(params.grammar)
    charged = _charged(engine_of(state).generate(prompt, params), state, principal.key_id)
    outputs = await admission_of(state).hold(charged)
    return await anext(outputs), outputs


async def _rest(first: RequestOutput, rest: AsyncIterator[RequestOutput]) -> AsyncIterator[RequestOutput]:
    yield first
    if not first.finished:
        async for out in rest:
            yield out


@dataclass
class _Joined:
    """A whole output: its text, last output (finish reason, usage) and every token's log-probabilities."""

    text: str
    last: RequestOutput
    logprobs: list[TokenLogprobs]


async def _join(first: RequestOutput, rest: AsyncIterator[RequestOutput]) -> _Joined:
    joined = _Joined("", first, [])
    async for out in _rest(first, rest):
        joined.text += out.text
        joined.last = out
        joined.logprobs.extend(out.logprobs or ())
    return joined


async def _sse(env: _Envelope, first: RequestOutput, rest: AsyncIterator[RequestOutput], lead: list[dict],
               choice: Callable[[RequestOutput], dict], include_usage: bool) -> AsyncIterator[str]:
    """Chunks of a plain completion: `lead` choices, one per output with text (or log-probabilities), then
    usage when asked."""
    if lead:
        yield env.sse(lead)
    last = first
    try:
        async for out in _rest(first, rest):
            if out.text or out.finished or out.logprobs:
                yield env.sse([{"index": 0, **choice(out), "finish_reason": out.finish_reason}])
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
    follow-up of the earlier user/assistant messages (retrieval searches for it rewritten with them).
    `response_format` (or a `guided_*` field) constrains the output; with `tools`, the model may (or, with
    `tool_choice` "required" or a named function, must) call one."""
    env = _Envelope("chatcmpl", "chat.completion.chunk" if body.stream else "chat.completion", state.model_name)
    params = body.sampling_params(bounded_max_tokens(state, body.max_completion_tokens or body.max_tokens, 512))
    if body.rag is not None:
        return await _rag_chat(body, env, params, state, principal)
    engine = engine_of(state)
    plan = plan_tools(body.tools, body.tool_choice)
    if plan is not None and plan.forced:
        if params.grammar is not None:
            raise ApiError(400, "invalid_request", "a forced tool call cannot be combined with response_format")
        params = replace(params, grammar=plan.grammar)
    tools = [t.model_dump(exclude_none=True) for t in plan.tools] if plan and engine.tokenizer.renders_tools else None
    prompt = engine.tokenizer.apply_chat_template(chat_messages(body.messages, plan, engine.tokenizer), tools=tools)
    first, rest = await _start(state, principal, prompt, params)
    if plan is not None:  # the whole output is needed to tell a call from an answer
        joined = await _join(first, rest)
        content, calls = parse_calls(joined.text, plan)
        message: dict = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
        finish = "tool_calls" if calls else joined.last.finish_reason
        logprobs = chat_logprobs(joined.logprobs, engine.tokenizer) if body.logprobs else None
        if body.stream:
            return StreamingResponse(_whole_sse(env, message, finish, logprobs, joined.last, body.include_usage),
                                     media_type="text/event-stream")
        return env.body([{"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish}],
                        usage=_output_usage(joined.last))

    def logprobs_of(out: RequestOutput) -> dict | None:
        return chat_logprobs(out.logprobs, engine.tokenizer) if out.logprobs is not None else None

    if body.stream:
        lead = [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]
        return StreamingResponse(
            _sse(env, first, rest, lead,
                 lambda out: {"delta": {"content": out.text} if out.text else {}, "logprobs": logprobs_of(out)},
                 body.include_usage),
            media_type="text/event-stream")
    joined = await _join(first, rest)
    return env.body([{"index": 0, "message": {"role": "assistant", "content": joined.text},
                      "logprobs": chat_logprobs(joined.logprobs, engine.tokenizer) if body.logprobs else None,
                      "finish_reason": joined.last.finish_reason}], usage=_output_usage(joined.last))


async def _whole_sse(env: _Envelope, message: dict, finish: str | None, logprobs: dict | None,
                     last: RequestOutput, include_usage: bool) -> AsyncIterator[str]:
    """A finished chat answer as chunks: the role, the content or the tool calls (with their indexes), the
    finish, usage when asked."""
    yield env.sse([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    delta: dict = {"content": message["content"]} if message["content"] else {}
    if message.get("tool_calls"):
        delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
    yield env.sse([{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": None}])
    yield env.sse([{"index": 0, "delta": {}, "finish_reason": finish}])
    if include_usage:
        yield env.sse([], usage=_output_usage(last))
    yield DONE


async def _rag_chat(body: ChatCompletionRequest, env: _Envelope, params: SamplingParams, state: AppState,
                    principal: Principal) -> dict | StreamingResponse:
    """A chat answered from a collection (`"rag"`), streamed or whole, with its citations and sources."""
    assert body.rag is not None
    question = body.last_user_message()
    if not question:
        raise ApiError(400, "invalid_request", "a RAG chat needs a user message (the question)")
    if body.tools:
        raise ApiError(400, "invalid_request", "tools cannot be combined with rag")
    if params.grammar is not None:
        await engine_of(state).check_grammar(params.grammar)
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


async def _rag_sse(env: _Envelope, answer: Answer, include_usage: bool) -> AsyncIterator[str]:
    """Chunks of a RAG answer: deltas, the finish, then one final chunk with citations and sources."""
    yield env.sse([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    citations: list[dict] | dict | None = []
    try:
        async for event in answer.events:
            if isinstance(event, TokenEvent):
                yield env.sse([{"index": 0, "delta": {"content": event.text}, "finish_reason": None}])
            elif isinstance(event, CitationsEvent | GroundingEvent):
                citations = citations_of(event)
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
    """A text completion of a prompt string (encoded as plain text) or of a list of token ids; `echo` returns
    the prompt before it (with its tokens' log-probabilities when `logprobs` is asked)."""
    tokenizer = engine_of(state).tokenizer
    prompt = tokenizer.encode(body.prompt) if isinstance(body.prompt, str) else body.prompt
    env = _Envelope("cmpl", "text_completion", state.model_name)
    params = body.sampling_params(bounded_max_tokens(state, body.max_tokens, 16))
    if body.echo and body.logprobs is not None:
        params = replace(params, prompt_logprobs=body.logprobs)
    first, rest = await _start(state, principal, prompt, params)
    echoed = (body.prompt if isinstance(body.prompt, str) else tokenizer.decode(prompt)) if body.echo else ""

    def logprobs_of(out: RequestOutput, offset: int) -> dict | None:
        if body.logprobs is None:
            return None
        if out.prompt_logprobs is None:
            return completion_logprobs(out.logprobs or [], tokenizer, offset)
        echo = completion_logprobs(out.prompt_logprobs, tokenizer, 0, first_token=prompt[0])
        generated = completion_logprobs(out.logprobs or [], tokenizer, offset)
        return {key: echo[key] + generated[key] for key in echo}

    if body.stream:
        sent = {"chars": len(echoed)}

        def chunk(out: RequestOutput) -> dict:
            text = (echoed if out is first else "") + out.text
            entry = {"text": text, "logprobs": logprobs_of(out, sent["chars"] - len(echoed) if out is first
                                                           else sent["chars"])}
            sent["chars"] += len(out.text)
            return entry

        return StreamingResponse(_sse(env, first, rest, [], chunk, body.include_usage),
                                 media_type="text/event-stream")
    joined = await _join(first, rest)
    logprobs = None
    if body.logprobs is not None:
        echo = completion_logprobs(first.prompt_logprobs or [], tokenizer, 0, first_token=prompt[0]) \
            if body.echo else None
        generated = completion_logprobs(joined.logprobs, tokenizer, len(echoed))
        logprobs = {key: echo[key] + generated[key] for key in generated} if echo else generated
    return env.body([{"index": 0, "text": echoed + joined.text, "logprobs": logprobs,
                      "finish_reason": joined.last.finish_reason}], usage=_output_usage(joined.last))
