"""The OpenAI responses' plumbing shared by chat and text completions: the envelope every response and chunk
shares, submitting a request (its grammar checked first, its usage charged), gathering or streaming its
outputs as SSE chunks (`data: {chunk}` lines ending with `data: [DONE]`; an error after the first byte is a
`data: {"error": ...}` line)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field

from appliance.engine.logprobs import TokenLogprobs
from appliance.engine.outputs import RequestOutput
from appliance.engine.sampling import SamplingParams
from appliance.errors import ApplianceError
from appliance.rag.answer_json import Answer, citations_of, sources_json
from appliance.rag.evidence import evidence_json
from appliance.rag.pipeline import CitationsEvent, DoneEvent, GroundingEvent, TokenEvent
from appliance.server.answers import stream_error, usage_of
from appliance.server.deps import AppState, Principal, admission_of, engine_of
from appliance.server.usage import RequestUsage

DONE = "data: [DONE]\n\n"


@dataclass
class Envelope:
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


def usage_json(prompt: int, completion: int, cached: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def output_usage(out: RequestOutput) -> dict:
    return usage_json(out.num_prompt_tokens, out.num_output_tokens, out.num_cached_tokens)


async def charged_outputs(outputs: AsyncGenerator[RequestOutput, None], state: AppState, key_id: str
                   ) -> AsyncGenerator[RequestOutput, None]:
    """`outputs`, with the finished request charged to `key_id` in the usage book."""
    started = time.perf_counter()
    async with aclosing(outputs):
        async for out in outputs:
            if out.finished:
                usage_of(state).record(key_id, None, RequestUsage.of_output(out, time.perf_counter() - started))
            yield out


async def start(state: AppState, principal: Principal, prompt: list[int], params: SamplingParams
                 ) -> tuple[RequestOutput, AsyncIterator[RequestOutput]]:
    """Check the grammar, submit and wait for the first output, so that bad grammars, queue-full and bad
    prompts become JSON errors."""
    if params.grammar is not None:
        await engine_of(state).check_grammar(params.grammar)
    charged = charged_outputs(engine_of(state).generate(prompt, params), state, principal.key_id)
    outputs = await admission_of(state).hold(charged)
    return await anext(outputs), outputs


async def _all(first: RequestOutput, rest: AsyncIterator[RequestOutput]) -> AsyncIterator[RequestOutput]:
    yield first
    if not first.finished:
        async for out in rest:
            yield out


@dataclass
class Joined:
    """A whole output: its text, last output (finish reason, usage) and every token's log-probabilities."""

    text: str
    last: RequestOutput
    logprobs: list[TokenLogprobs]


async def join(first: RequestOutput, rest: AsyncIterator[RequestOutput]) -> Joined:
    joined = Joined("", first, [])
    async for out in _all(first, rest):
        joined.text += out.text
        joined.last = out
        joined.logprobs.extend(out.logprobs or ())
    return joined


async def output_sse(env: Envelope, first: RequestOutput, rest: AsyncIterator[RequestOutput], lead: list[dict],
               choice: Callable[[RequestOutput], dict], include_usage: bool) -> AsyncIterator[str]:
    """Chunks of a plain completion: `lead` choices, one per output with text (or log-probabilities), then
    usage when asked."""
    if lead:
        yield env.sse(lead)
    last = first
    try:
        async for out in _all(first, rest):
            if out.text or out.finished or out.logprobs:
                yield env.sse([{"index": 0, **choice(out), "finish_reason": out.finish_reason}])
            last = out
    except ApplianceError as exc:
        yield f"data: {json.dumps(stream_error(exc))}\n\n"
        return
    if include_usage:
        yield env.sse([], usage=output_usage(last))
    yield DONE


async def whole_sse(env: Envelope, message: dict, finish: str | None, logprobs: dict | None,
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
        yield env.sse([], usage=output_usage(last))
    yield DONE


async def rag_sse(env: Envelope, answer: Answer, include_usage: bool) -> AsyncIterator[str]:
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
                usage = usage_json(event.prompt_tokens, event.completion_tokens, event.tokens_reused)
                yield env.sse([], citations=citations, evidence=evidence_json(event.evidence),
                              sources=sources_json(answer.sources),
                              retrieval_query=answer.sources.retrieval_query, usage=usage if include_usage else None)
    except ApplianceError as exc:
        yield f"data: {json.dumps(stream_error(exc))}\n\n"
        return
    yield DONE
