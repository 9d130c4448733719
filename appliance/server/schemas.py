"""Pydantic models of the OpenAI-compatible API (the HTTP boundary only)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from appliance.config import DocCacheMode
from appliance.engine.sampling import MAX_LOGPROBS, SamplingParams
from appliance.server.schemas_base import RequestModel
from appliance.server.schemas_filters import FiltersIn
from appliance.server.schemas_structured import StructuredOutputFields, Tool, ToolCall, ToolChoice

__all__ = ["RequestModel", "SSE_RESPONSE", "ChatCompletionRequest", "CompletionRequest", "EmbeddingRequest"]

# OpenAPI of routes that answer with server-sent events when the body asks `"stream": true`
SSE_RESPONSE: dict[int | str, dict] = {200: {"content": {"text/event-stream": {}}}}


StopString = Annotated[str, Field(min_length=1, max_length=1000)]


class ContentPart(RequestModel):
    type: Literal["text"] = "text"
    text: str


class ChatMessageIn(RequestModel):
    """A message; an assistant's may hold `tool_calls` instead of content, a `tool` message answers one."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = Field(default=None, max_length=200_000)
    tool_calls: list[ToolCall] | None = Field(default=None, max_length=64)
    tool_call_id: str | None = Field(default=None, max_length=200)
    name: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _has_content(self) -> ChatMessageIn:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("a message needs content (an assistant's may have tool_calls instead)")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(RequestModel):
    include_usage: bool = False


class RagOptions(RequestModel):
    """`"rag": {"collection": C, "k": N}`: answer from collection C's top-N passages, with citations;
    `doc_cache` picks the document KV cache mode for this request (default: the server's); `filters` keeps
    retrieval to the documents that pass them."""

    collection: str = Field(min_length=1, max_length=64)
    k: int = Field(default=5, ge=1, le=20)
    doc_cache: DocCacheMode | None = None
    filters: FiltersIn | None = None


class _GenerationRequest(StructuredOutputFields):
    """Fields shared by chat and text completions (the structured-output ones from `StructuredOutputFields`)."""

    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=32768)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: StopString | list[StopString] | None = None
    n: int = Field(default=1, ge=1, le=1)
    user: str | None = None
    ignore_eos: bool = False  # vLLM's extension: generate through end-of-sequence tokens (benchmarks)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling_params(self, max_tokens: int) -> SamplingParams:
        """The engine's sampling parameters, with the route's bounded `max_tokens` and the output's grammar."""
        stop = () if self.stop is None else (self.stop,) if isinstance(self.stop, str) else tuple(self.stop[:8])
        return SamplingParams(max_tokens=max_tokens, temperature=self.temperature,
                              top_p=self.top_p, top_k=self.top_k, seed=self.seed, stop=stop,
                              ignore_eos=self.ignore_eos, grammar=self.grammar(), logprobs=self.token_logprobs)

    @property
    def token_logprobs(self) -> int | None:
        """How many alternatives each output token's log-probability comes with (None: no log-probabilities)."""
        return None


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=512)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=32768)
    rag: RagOptions | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    tools: list[Tool] | None = Field(default=None, max_length=128)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True  # accepted; the model calls one function per turn

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    @property
    def token_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def last_user_message(self) -> str | None:
        return next((m.text() for m in reversed(self.messages) if m.role == "user"), None)

    def earlier_turns(self) -> list[tuple[str, str]]:
        """(question, answer) of each user message answered by the assistant before the last user message
        (system messages aside; a user message without an answer is passed over)."""
        last_user = max((i for i, m in enumerate(self.messages) if m.role == "user"), default=0)
        turns, asked = [], None
        for m in self.messages[:last_user]:
            if m.role == "user":
                asked = m.text()
            elif m.role == "assistant" and asked is not None:
                turns.append((asked, m.text()))
                asked = None
        return turns


class CompletionRequest(_GenerationRequest):
    prompt: str | list[int] = Field(min_length=1, max_length=200_000)
    max_tokens: int | None = Field(default=16, ge=1, le=32768)  # OpenAI's default for completions
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)  # the best alternatives at each token
    echo: bool = False  # the prompt comes back before the completion (with its log-probabilities when asked)

    @property
    def token_logprobs(self) -> int | None:
        return self.logprobs


class EmbeddingRequest(RequestModel):
    model: str | None = None
    input: str | list[str] = Field(min_length=1, max_length=2048)
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else self.input
