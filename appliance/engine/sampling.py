"""Sampling parameters (greedy, temperature, top-k, top-p, seed, stops); `sampler.py` draws with them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

from appliance.engine.grammar import GrammarSpec
from appliance.errors import RequestError

if TYPE_CHECKING:
    from appliance.engine.tokenizer import TextTokenizer

MAX_LOGPROBS = 20  # the most alternatives a request may ask for at each position (OpenAI's top_logprobs bound)

# (generated token ids so far, logits [V]) -> logits [V]; used e.g. to constrain citation markers.
LogitsProcessor = Callable[[list[int], torch.Tensor], torch.Tensor]


@runtime_checkable
class TokenizerAware(Protocol):
    """A logits processor that reads token texts. `LLMEngine.add_request` calls `bind` once for each such processor
    of the request, in the process that runs the step loop, before the request's first step. A processor crosses
    to that process inside its `SamplingParams`: what `bind` keeps (the tokenizer) must stay out of its pickle."""

    def bind(self, tokenizer: TextTokenizer) -> None: ...


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no limit
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logits_processors: tuple[LogitsProcessor, ...] = field(default=(), compare=False)
    grammar: GrammarSpec | None = None  # the output must match it (JSON schema, regex, choice, EBNF)
    logprobs: int | None = None  # each output token's log-probability and this many best alternatives
    prompt_logprobs: int | None = None  # the same for each prompt token after the first (no prefix cache)

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise RequestError("max_tokens must be at least 1")
        if not 0.0 <= self.temperature <= 100.0:
            raise RequestError("temperature must be between 0 and 100")
        if not 0.0 < self.top_p <= 1.0:
            raise RequestError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise RequestError("top_k must be >= 0")
        if any(not s for s in self.stop):
            raise RequestError("stop strings must not be empty")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_LOGPROBS:
                raise RequestError(f"{name} must be between 0 and {MAX_LOGPROBS}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
