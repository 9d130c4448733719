"""One question, end to end: retrieve, assemble from stored tokens, generate with constrained citations."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from appliance.engine.front import EngineFront
from appliance.engine.outputs import RequestOutput
from appliance.engine.sampling import SamplingParams
from appliance.rag.citations import Citation, CitationConstraint, check_citations
from appliance.rag.prompt import PromptBuilder
from retrieval.service import RetrievalService
from retrieval.types import Chunk


@dataclass(frozen=True)
class SourcesEvent:
    passages: tuple[Chunk, ...]  # passage n is passages[n - 1]


@dataclass(frozen=True)
class TokenEvent:
    text: str


@dataclass(frozen=True)
class CitationsEvent:
    citations: list[Citation]


@dataclass(frozen=True)
class DoneEvent:
    answer: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    tokens_reused: int
    tokens_computed: int
    tokens_recomputed: int  # chunk tokens with cached KV that were recomputed anyway (blend)
    tokens_encoded: int  # chunk tokens that had to be encoded into the document cache first
    doc_cache: str  # the mode that served the request
    retrieval_ms: float
    queue_ms: float
    ttft_ms: float
    total_ms: float


AskEvent = SourcesEvent | TokenEvent | CitationsEvent | DoneEvent


class AskPipeline:
    """Answers questions over collections with the shared engine and retrieval service."""

    def __init__(self, engine: EngineFront, retrieval: RetrievalService) -> None:
        self.engine = engine
        self.retrieval = retrieval
        self.builder = PromptBuilder(engine.tokenizer)

    async def ask(self, question: str, collections: list[str], k: int, params: SamplingParams,
                  doc_cache: str | None = None) -> AsyncIterator[AskEvent]:
        """Yield sources, then token deltas, then citations, then the done summary. `doc_cache` picks the
        document-cache mode for this question (default: the engine's)."""
        started = time.perf_counter()
        hits = await asyncio.to_thread(self.retrieval.search, question, collections, k, "hybrid")
        retrieval_ms = (time.perf_counter() - started) * 1000
        prompt = self.builder.build(question, [hit.chunk for hit in hits])
        yield SourcesEvent(prompt.passages)
        constraint = CitationConstraint(self.engine.tokenizer, len(prompt.passages))
        params = replace(params, logits_processors=(*params.logits_processors, constraint))
        answer, last, ttft_ms = "", None, 0.0
        out: RequestOutput
        async for out in self.engine.generate(prompt.token_ids, params, layout=prompt.layout(), doc_cache=doc_cache):
            if last is None:
                ttft_ms = (time.perf_counter() - started) * 1000
            last = out
            if out.text:
                answer += out.text
                yield TokenEvent(out.text)
        assert last is not None
        yield CitationsEvent(check_citations(answer, prompt.passages))
        total_ms = (time.perf_counter() - started) * 1000
        yield DoneEvent(answer, last.finish_reason, last.num_prompt_tokens, last.num_output_tokens,
                        last.num_cached_tokens, last.num_computed_prompt_tokens, last.num_recomputed_tokens,
                        last.num_encoded_tokens, last.doc_mode, round(retrieval_ms, 2),
                        round(last.queue_s * 1000, 2), round(ttft_ms, 2), round(total_ms, 2))
