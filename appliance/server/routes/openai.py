"""OpenAI-compatible endpoints: /v1/models, /v1/chat/completions (plain or RAG), /v1/completions.

Errors before the first byte are JSON errors with their status; the streams and what the endpoints share:
`openai_streams.py`. Embeddings: `openai_embeddings.py`.
"""

from __future__ import annotations

from dataclasses import replace

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from appliance.engine.logprobs import TokenLogprobs
from appliance.engine.outputs import RequestOutput
from appliance.engine.sampling import SamplingParams
from appliance.rag.answer_json import collect
from appliance.rag.history import text_history
from appliance.server.answers import open_answer
from appliance.server.deps import AppState, Principal, current_principal, engine_of, generating_principal, get_state
from appliance.server.errors import ApiError
from appliance.server.limits import bounded_max_tokens
from appliance.server.logprobs_json import chat_logprobs, completion_logprobs
from appliance.server.openai_streams import (
    Envelope,
    join,
    output_sse,
    output_usage,
    rag_sse,
    start,
    usage_json,
    whole_sse,
)
from appliance.server.schemas import SSE_RESPONSE, ChatCompletionRequest, CompletionRequest
from appliance.server.schemas_filters import search_filters
from appliance.server.tool_calls import chat_messages, parse_calls, plan_tools

router = APIRouter(prefix="/v1")


@router.get("/models")
def list_models(state: AppState = Depends(get_state), _: Principal = Depends(current_principal)) -> dict:
    return {"object": "list", "data": [
        {"id": state.model_name, "object": "model", "created": 0, "owned_by": "appliance"}]}


@router.post("/chat/completions", response_model=None, responses=SSE_RESPONSE)
async def chat_completions(body: ChatCompletionRequest, state: AppState = Depends(get_state),
                           principal: Principal = Depends(generating_principal)) -> dict | StreamingResponse:
    """A chat completion; with `"rag"`, the last user message answered from a collection, with citations, as a
    follow-up of the earlier user/assistant messages (retrieval searches for it rewritten with them).
    `response_format` (or a `guided_*` field) constrains the output; with `tools`, the model may (or, with
    `tool_choice` "required" or a named function, must) call one."""
    env = Envelope("chatcmpl", "chat.completion.chunk" if body.stream else "chat.completion", state.model_name)
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
    first, rest = await start(state, principal, prompt, params)
    if plan is not None:  # the whole output is needed to tell a call from an answer
        joined = await join(first, rest)
        content, calls = parse_calls(joined.text, plan)
        message: dict = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
        finish = "tool_calls" if calls else joined.last.finish_reason
        logprobs = chat_logprobs(joined.logprobs, engine.tokenizer) if body.logprobs else None
        if body.stream:
            return StreamingResponse(whole_sse(env, message, finish, logprobs, joined.last, body.include_usage),
                                     media_type="text/event-stream")
        return env.body([{"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish}],
                        usage=output_usage(joined.last))

    def logprobs_of(out: RequestOutput) -> dict | None:
        return chat_logprobs(out.logprobs, engine.tokenizer) if out.logprobs is not None else None

    if body.stream:
        lead = [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]
        return StreamingResponse(
            output_sse(env, first, rest, lead,
                 lambda out: {"delta": {"content": out.text} if out.text else {}, "logprobs": logprobs_of(out)},
                 body.include_usage),
            media_type="text/event-stream")
    joined = await join(first, rest)
    return env.body([{"index": 0, "message": {"role": "assistant", "content": joined.text},
                      "logprobs": chat_logprobs(joined.logprobs, engine.tokenizer) if body.logprobs else None,
                      "finish_reason": joined.last.finish_reason}], usage=output_usage(joined.last))


async def _rag_chat(body: ChatCompletionRequest, env: Envelope, params: SamplingParams, state: AppState,
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
                               body.rag.doc_cache, history, search_filters(body.rag.filters))
    if body.stream:
        return StreamingResponse(rag_sse(env, answer, body.include_usage), media_type="text/event-stream")
    result = await collect(answer)
    message = {"role": "assistant", "content": result["answer"]}
    usage = usage_json(result["usage"]["prompt_tokens"], result["usage"]["completion_tokens"],
                   result["kv"]["tokens_reused"])
    return env.body([{"index": 0, "message": message, "finish_reason": result["finish_reason"]}],
                    usage=usage, citations=result["citations"], evidence=result["evidence"], sources=result["sources"],
                    retrieval_query=result["retrieval_query"])


@router.post("/completions", response_model=None, responses=SSE_RESPONSE)
async def completions(body: CompletionRequest, state: AppState = Depends(get_state),
                      principal: Principal = Depends(generating_principal)) -> dict | StreamingResponse:
    """A text completion of a prompt string (encoded as plain text) or of a list of token ids; `echo` returns
    the prompt before it (with its tokens' log-probabilities when `logprobs` is asked)."""
    tokenizer = engine_of(state).tokenizer
    prompt = tokenizer.encode(body.prompt) if isinstance(body.prompt, str) else body.prompt
    env = Envelope("cmpl", "text_completion", state.model_name)
    params = body.sampling_params(bounded_max_tokens(state, body.max_tokens, 16))
    if body.echo and body.logprobs is not None:
        params = replace(params, prompt_logprobs=body.logprobs)
    first, rest = await start(state, principal, prompt, params)
    echoed = (body.prompt if isinstance(body.prompt, str) else tokenizer.decode(prompt)) if body.echo else ""

    def logprobs_of(scored_prompt: list[TokenLogprobs] | None, generated: list[TokenLogprobs], offset: int
                    ) -> dict | None:
        """The choice's logprobs: the echoed prompt's (when scored) then the generated tokens' from `offset`."""
        if body.logprobs is None:
            return None
        listed = completion_logprobs(generated, tokenizer, offset)
        if scored_prompt is None:
            return listed
        echo = completion_logprobs(scored_prompt, tokenizer, 0, first_token=prompt[0])
        return {key: echo[key] + listed[key] for key in echo}

    if body.stream:
        sent = {"chars": len(echoed)}

        def chunk(out: RequestOutput) -> dict:
            entry = {"text": (echoed if out is first else "") + out.text,
                     "logprobs": logprobs_of(out.prompt_logprobs, out.logprobs or [], sent["chars"])}
            sent["chars"] += len(out.text)
            return entry

        return StreamingResponse(output_sse(env, first, rest, [], chunk, body.include_usage),
                                 media_type="text/event-stream")
    joined = await join(first, rest)
    logprobs = logprobs_of(first.prompt_logprobs, joined.logprobs, len(echoed))
    return env.body([{"index": 0, "text": echoed + joined.text, "logprobs": logprobs,
                      "finish_reason": joined.last.finish_reason}], usage=output_usage(joined.last))
