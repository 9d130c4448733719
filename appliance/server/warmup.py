"""Start-up warm-up: what the first question would otherwise pay for, done before `/ready` turns 200.

Measured on a fresh server (docs/BENCHMARKS.md, "First question"): without it the first `/api/ask` spent
~4.3 s in retrieval (loading the embedder and its query threads, the collection's indexes) and its prefill
ran ~20% slower than the next ones (the engine thread's first ops of each shape), with the system prefix
not yet in the prefix cache. So the server searches every collection once and runs one RAG-shaped request
through the engine (the real system prefix, passages of filler text, a question, a few decode steps) on the
engine thread: longer than one prefill chunk, so both the fresh and the continued-chunk attention run, and
the system prefix stays cached for the first real question.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from appliance.engine.front import EngineFront
from appliance.engine.sampling import SamplingParams
from appliance.rag.prompt import PromptBuilder, RagPrompt
from retrieval.service import RetrievalService
from retrieval.types import Chunk

log = logging.getLogger("appliance.server")

_FILLER = ("The appliance reads its documents before the first question arrives, so that the people who "
           "ask do not wait for it to wake up. This passage is only used to warm the engine at start-up. ")
_PASSAGE_TOKENS = 256
WARMUP_DOC = "warm-up"  # not a stored document's id (those are content hashes)


@dataclass(frozen=True)
class WarmupTimes:
    """Seconds spent warming each part (0.0 for a part that was skipped)."""

    retrieval_s: float
    engine_s: float


def warmup_prompt(builder: PromptBuilder, tokens: int, limit: int) -> RagPrompt | None:
    """A RAG prompt of about `tokens` tokens and at most `limit` (as many passages as fit; None when not even one
    does): the real system prefix, numbered passages of filler text (~256 tokens each, no two alike) of the
    document WARMUP_DOC, a question, the assistant header."""
    filler = builder.tokenizer.encode(_FILLER * (_PASSAGE_TOKENS // 30 + 2))[:_PASSAGE_TOKENS]
    passages = [Chunk(-n, WARMUP_DOC, WARMUP_DOC, 0, "", filler[n:] + filler[:n], "Warm-up", WARMUP_DOC, None, ())
                for n in range(1, max(1, tokens // _PASSAGE_TOKENS) + 1)]
    for count in range(len(passages), 0, -1):
        prompt = builder.build("What is this passage about?", passages[:count])
        if len(prompt.token_ids) <= limit:
            return prompt
    return None


async def warm_engine(engine: EngineFront, tokens: int) -> None:
    """Run one greedy request of a ~`tokens`-token RAG prompt (fewer where the engine's KV cannot hold that many)
    and 4 generated tokens through the engine, in the server's document-cache mode (so `blend` encodes, loads
    and blends passages once too); the filler passages' KV is dropped from the document cache afterwards."""
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    limit = engine.max_model_len - 1 - params.max_tokens
    prompt = warmup_prompt(PromptBuilder(engine.tokenizer), tokens, limit)
    if prompt is None:
        log.warning("engine warm-up skipped: the engine serves at most %d tokens, too few for one passage", limit)
        return
    try:
        async for _ in engine.generate(prompt.token_ids, params, request_id="warm-up", layout=prompt.layout()):
            pass
    finally:
        engine.invalidate_documents([WARMUP_DOC])


async def warm_up(engine: EngineFront, retrieval: RetrievalService | None, tokens: int,
                  timeout_s: float) -> WarmupTimes:
    """Warm retrieval (off the event loop), then the engine with a ~`tokens`-token prompt (0: no warm-up at all).
    Neither is waited for longer than `timeout_s`: past it the server starts anyway (a load still running
    finishes in its thread; the engine's warm-up request is aborted)."""
    async def timed(what: str, work) -> float:
        started = time.perf_counter()
        try:
            await asyncio.wait_for(work, timeout_s)
        except TimeoutError:
            log.warning("warm-up of the %s took over %.0f s: starting without waiting for it", what, timeout_s)
        return time.perf_counter() - started

    if tokens <= 0:
        return WarmupTimes(0.0, 0.0)
    retrieval_s = await timed("retrieval", asyncio.to_thread(retrieval.warm_up)) if retrieval is not None else 0.0
    return WarmupTimes(retrieval_s, await timed("engine", warm_engine(engine, tokens)))
