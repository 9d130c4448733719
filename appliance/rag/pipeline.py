"""One question, end to end: rewrite a follow-up, retrieve, assemble from stored tokens, generate with
constrained citations (or, under a JSON grammar, fields each traced to the passages that hold it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from appliance.engine.front import EngineFront
from appliance.engine.outputs import RequestOutput
from appliance.engine.sampling import SamplingParams
from appliance.rag.answering import AnswerOptions, arrange
from appliance.rag.citations import Citation, CitationConstraint, check_citations
from appliance.rag.copy_bias import PassageCopyBias
from appliance.rag.evidence import Evidence, evidence_for
from appliance.rag.grounding import FieldGrounding, ground_fields
from appliance.rag.history import History, not_shown, number_passages, recent_turns
from appliance.rag.loop_guard import LoopGuard
from appliance.rag.prompt import SYSTEM_PROMPTS, PromptBuilder
from appliance.rag.rewrite import DEFAULT_POLICY, FollowUpRewriter, Policy, PriorTurn, phrasings
from retrieval.filters import SearchFilters
from retrieval.service import RetrievalService
from retrieval.types import Chunk


@dataclass(frozen=True)
class SourcesEvent:
    passages: tuple[Chunk, ...]  # what retrieval returned for this question
    numbers: tuple[int, ...]  # passages[i] is cited as [numbers[i]] (1..k for a first question)
    retrieval_query: str  # what retrieval searched for (a follow-up rewritten into a standalone question)


@dataclass(frozen=True)
class TokenEvent:
    text: str


@dataclass(frozen=True)
class CitationsEvent:
    citations: list[Citation]
    evidence: list[Evidence]  # the passage sentences that best support the answer, best first


@dataclass(frozen=True)
class GroundingEvent:
    """A JSON answer's leaf values, each with the passages that hold it (None: the answer is not JSON)."""

    fields: list[FieldGrounding] | None


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
    rewrite_ms: float
    retrieval_ms: float
    queue_ms: float
    ttft_ms: float
    total_ms: float
    retrieval_query: str
    rewrite: str  # how the retrieval query was made: "none", "model" or "fallback"
    turns_in_prompt: int  # earlier turns the prompt carried
    answer_token_ids: tuple[int, ...]  # as generated, without the end-of-turn token
    added: tuple[tuple[int, Chunk], ...]  # the numbered passages this prompt showed first
    evidence: tuple[Evidence, ...] = ()  # as in the CitationsEvent
    conversation_id: str | None = None  # set once the turn is saved in a conversation
    turn: int | None = None  # its number there


AskEvent = SourcesEvent | TokenEvent | CitationsEvent | GroundingEvent | DoneEvent

EXTRACTION_NOTE = "\n\nAnswer with JSON only, each value copied exactly from the passages."


@dataclass(frozen=True)
class Answered:
    """A whole answer, for a caller that does not stream it (`answered`)."""

    sources: SourcesEvent
    citations: list[Citation]
    evidence: list[Evidence]
    done: DoneEvent


async def answered(events: AsyncIterator[AskEvent]) -> Answered:
    """`AskPipeline.ask`'s events, gathered."""
    sources, citations, evidence, done = None, [], [], None
    async for event in events:
        if isinstance(event, SourcesEvent):
            sources = event
        elif isinstance(event, CitationsEvent):
            citations, evidence = event.citations, event.evidence
        elif isinstance(event, DoneEvent):
            done = event
    assert sources is not None and done is not None, "ask yields sources first and done last"
    return Answered(sources, citations, evidence, done)


class AskPipeline:
    """Answers questions over collections with the shared engine and retrieval service, shown and asked as
    `options` say (`answering.py`)."""

    def __init__(self, engine: EngineFront, retrieval: RetrievalService, rewrite: Policy = DEFAULT_POLICY,
                 options: AnswerOptions | None = None) -> None:
        self.engine = engine
        self.retrieval = retrieval
        self.options = options or AnswerOptions()
        self.builder = PromptBuilder(engine.tokenizer, SYSTEM_PROMPTS[self.options.prompt])
        self.rewriter = FollowUpRewriter(engine, policy=rewrite)

    async def ask(self, question: str, collections: list[str], k: int, params: SamplingParams,
                  doc_cache: str | None = None, history: History | None = None,
                  filters: SearchFilters | None = None) -> AsyncIterator[AskEvent]:
        """Yield sources, then token deltas, then citations, then the done summary. `doc_cache` picks the
        document-cache mode for this question (default: the engine's); `history` makes it a follow-up in a
        conversation (retrieval searches for the question rewritten with the earlier turns; the prompt
        carries the recent turns as they were, so the prefix cache serves them); retrieval keeps to the
        documents that pass `filters`. With a grammar in `params`
        (a JSON schema: grounded extraction) the answer is JSON without citation markers, and a
        `GroundingEvent` (each value's passages) takes the place of the `CitationsEvent`."""
        history = history or History()
        started = time.perf_counter()
        rewrite = await self.rewriter.rewrite([PriorTurn(t.question, t.answer) for t in history.turns], question)
        searched = time.perf_counter()
        hits = await asyncio.to_thread(self.retrieval.search_phrasings, phrasings(rewrite, question), collections, k,
                                       filters)
        retrieval_ms = (time.perf_counter() - searched) * 1000
        order = self.options.order_for(doc_cache or self.engine.info.doc_cache)
        sources = number_passages(arrange([hit.chunk for hit in hits], order), history.numbers)
        # the earlier turns get the budget, within what the context leaves beside this turn and its answer
        alone = len(self.builder.build_turn([], not_shown(sources, []), question).token_ids)
        room = self.engine.max_model_len - alone - params.max_tokens
        shown = recent_turns(self.builder, history.turns, max(0, min(history.budget, room)))
        added = not_shown(sources, shown)
        extracting = params.grammar is not None
        prompt = self.builder.build_turn(shown, added, question + (EXTRACTION_NOTE if extracting else ""))
        yield SourcesEvent(tuple(c for _, c in sources), tuple(n for n, _ in sources), rewrite.query)
        numbered = prompt.numbered()
        if not extracting:
            steer = {n: c.text for n, c in numbered.items()} if self.options.steer_citations else None
            constraint = CitationConstraint(self.engine.tokenizer, prompt.numbers, passages=steer, question=question)
            copying = (PassageCopyBias([c.token_ids for c in numbered.values()], self.options.copy_bias,
                                       self.engine.tokenizer.stop_token_ids),) if self.options.copy_bias else ()
            guard = (LoopGuard(),) if self.options.loop_guard else ()  # after the constraint: it sees the mask
            params = replace(params, logits_processors=(*params.logits_processors, *copying, constraint, *guard))
        answer, last, ttft_ms, token_ids = "", None, 0.0, []
        out: RequestOutput
        async for out in self.engine.generate(prompt.token_ids, params, layout=prompt.layout(), doc_cache=doc_cache):
            if last is None:
                ttft_ms = (time.perf_counter() - started) * 1000
            last = out
            token_ids += out.token_ids
            if out.text:
                answer += out.text
                yield TokenEvent(out.text)
        assert last is not None
        evidence: list[Evidence] = []
        if extracting:
            yield GroundingEvent(ground_fields(answer, numbered))
        else:
            citations = check_citations(answer, numbered, question=question)
            if self.options.evidence:
                evidence = evidence_for(answer, question, numbered, citations, self.options.evidence)
            yield CitationsEvent(citations, evidence)
        total_ms = (time.perf_counter() - started) * 1000
        if token_ids and token_ids[-1] in self.engine.tokenizer.stop_token_ids:
            token_ids.pop()
        yield DoneEvent(answer, last.finish_reason, last.num_prompt_tokens, last.num_output_tokens,
                        last.num_cached_tokens, last.num_computed_prompt_tokens, last.num_recomputed_tokens,
                        last.num_encoded_tokens, last.doc_mode, round(rewrite.ms, 2), round(retrieval_ms, 2),
                        round(last.queue_s * 1000, 2), round(ttft_ms, 2), round(total_ms, 2), rewrite.query,
                        rewrite.method, len(shown), tuple(token_ids), tuple(added), tuple(evidence))
