"""The timed view of the engine that every route and the ask pipeline generate through."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import TYPE_CHECKING, cast

from appliance.engine.doc_cache.layout import PromptLayout
from appliance.engine.grammar import GrammarSpec
from appliance.engine.outputs import RequestOutput
from appliance.engine.sampling import SamplingParams
from appliance.server.metrics import Metrics

if TYPE_CHECKING:
    from appliance.engine.front import EngineFront
    from appliance.engine.info import EngineInfo
    from appliance.engine.tokenizer import TextTokenizer


class MeteredEngine:
    """`EngineFront.generate` timed into the latency histograms (TTFT, inter-token, end-to-end)."""

    def __init__(self, engine: EngineFront, metrics: Metrics) -> None:
        self.engine = engine
        self.metrics = metrics

    @property
    def tokenizer(self) -> TextTokenizer:
        return self.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def info(self) -> EngineInfo:
        return self.engine.info

    async def check_grammar(self, spec: GrammarSpec) -> None:
        await self.engine.check_grammar(spec)

    async def generate(self, prompt: list[int], params: SamplingParams, request_id: str | None = None,
                       layout: PromptLayout | None = None, doc_cache: str | None = None
                       ) -> AsyncGenerator[RequestOutput, None]:
        """Same contract as `EngineFront.generate`; closing this stream aborts the request."""
        m = self.metrics
        started = time.perf_counter()
        previous: float | None = None
        stream = cast(AsyncGenerator[RequestOutput, None],
                      self.engine.generate(prompt, params, request_id, layout, doc_cache))
        async with aclosing(stream) as outputs:
            async for out in outputs:
                now = time.perf_counter()
                if previous is None:
                    m.ttft.observe(now - started)
                else:
                    m.itl.observe(now - previous)
                previous = now
                if out.finished:
                    m.e2e.observe(now - started)
                    m.prompt_tokens.inc(out.num_prompt_tokens)
                yield out
