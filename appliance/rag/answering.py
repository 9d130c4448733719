"""How the ask pipeline shows a question's passages and asks for its answer (`AnswerOptions`), with the choices
measured by `appliance bench answers` (docs/BENCHMARKS.md "Answers against a standard RAG pipeline").

- passage order: `canonical` (by chunk id: the same passage set retrieved in any order makes the same prompt, so
  the exact prefix cache reuses it), `relevance` (the most relevant passage last, nearest the question; the
  document cache's `blend` and `reuse` modes reuse a passage at any position, so the order is free there), or
  `auto` (canonical under `exact`, relevance otherwise);
- the instructions (`prompt`): `cite` (answer from the passages, cite each statement), `short` (the answer in
  a few words first, then one supporting sentence with its citation), `short+examples` (the same with a worked
  example in the system prefix, which the prefix cache holds after the first request);
- citations steered into the answer at sentence ends (`steer_citations`, see `citations.CitationConstraint`);
- evidence quotes: the passage sentences that best support the answer (`evidence`, how many);
- a bias toward the passages' own tokens while decoding (`copy_bias`, added to their logits; 0: none; see
  `copy_bias.PassageCopyBias`);
- a guard that stops the answer from repeating a short block of tokens a third time in a row (`loop_guard`, see
  `loop_guard.LoopGuard`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from appliance.config import Settings
from retrieval.types import Chunk

PassageOrder = Literal["auto", "canonical", "relevance"]
AnswerPrompt = Literal["cite", "short", "short+examples"]
PASSAGE_ORDERS: tuple[str, ...] = get_args(PassageOrder)
ANSWER_PROMPTS: tuple[str, ...] = get_args(AnswerPrompt)


@dataclass(frozen=True)
class AnswerOptions:
    """The defaults are what measured best (`appliance bench answers`); `Settings` takes them from here."""

    passage_order: str = "auto"  # PASSAGE_ORDERS
    prompt: str = "short"  # ANSWER_PROMPTS
    steer_citations: bool = True
    evidence: int = 1  # evidence quotes per answer (0: none)
    copy_bias: float = 3.0  # added to the logits of the passages' tokens while decoding (0: none)
    loop_guard: bool = True  # ban the token that would start a third copy of a short block in a row

    def __post_init__(self) -> None:
        if self.passage_order not in PASSAGE_ORDERS:
            raise ValueError(f"passage_order must be one of {', '.join(PASSAGE_ORDERS)}")
        if self.prompt not in ANSWER_PROMPTS:
            raise ValueError(f"prompt must be one of {', '.join(ANSWER_PROMPTS)}")
        if self.evidence < 0:
            raise ValueError("evidence must be >= 0")
        if not 0.0 <= self.copy_bias <= 10.0:
            raise ValueError("copy_bias must be between 0 and 10")

    def order_for(self, doc_cache: str) -> str:
        """The order a request served in `doc_cache` mode gets: `auto` resolved."""
        if self.passage_order != "auto":
            return self.passage_order
        return "canonical" if doc_cache == "exact" else "relevance"


def answer_options(settings: Settings) -> AnswerOptions:
    """The options `settings` choose (APPLIANCE_PASSAGE_ORDER, _ANSWER_PROMPT, _STEER_CITATIONS, _EVIDENCE_QUOTES,
    _COPY_BIAS, _LOOP_GUARD)."""
    return AnswerOptions(settings.passage_order, settings.answer_prompt, settings.steer_citations,
                         settings.evidence_quotes, settings.copy_bias, settings.loop_guard)


def arrange(ranked: Sequence[Chunk], order: str) -> list[Chunk]:
    """`ranked` (best first) in prompt order: `canonical` by chunk id, `relevance` best last. The same passages
    either way; a passage whose text repeats a better-ranked one's (whitespace and case aside) is dropped."""
    seen: set[str] = set()
    unique = []
    for chunk in ranked:
        text = " ".join(chunk.text.lower().split())
        if text not in seen:
            seen.add(text)
            unique.append(chunk)
    if order == "canonical":
        return sorted(unique, key=lambda c: c.chunk_id)
    if order == "relevance":
        return unique[::-1]
    raise ValueError(f"no passage order {order!r} (one of canonical, relevance)")
