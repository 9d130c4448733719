"""The RAG benchmark's workloads: token-identical prompts built once from real retrieval, replayed to every system.

(A) skewed traffic: the hand-written questions drawn with Zipf-skewed popularity, each in one of several
    phrasings (so passage sets overlap without repeating exactly); the first half warms every system, the
    second half is measured.
(B) a pre-encoded collection: the pages that answer the questions, their chunks encoded ahead of time
    (`appliance warm`); every question is asked once, in a phrasing not used by (A), to a fresh system.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.bench.retrieval import QUESTIONS

if TYPE_CHECKING:
    from appliance.engine.doc_cache.layout import PromptLayout
    from appliance.engine.tokenizer import TextTokenizer
    from retrieval.service import RetrievalService

PHRASINGS_A = ("{q}", "Quick question: {q}", "In Python, {ql}", "{q} Please answer briefly.",
               "I would like to know: {ql}")
PHRASINGS_B = ("Could you tell me {ql}", "Python docs question: {q}")


@dataclass(frozen=True)
class BenchPrompt:
    """One request of a workload: the exact prompt tokens every system receives."""

    question: str
    token_ids: list[int]
    layout: PromptLayout
    passages: int
    retrieval_ms: float


@dataclass(frozen=True)
class Question:
    text: str
    page: str


def load_questions(limit: int | None = None) -> list[Question]:
    items = json.loads(Path(QUESTIONS).read_text())["questions"]
    return [Question(q["question"], q["page"]) for q in items][:limit]


def phrase(question: str, template: str) -> str:
    return template.format(q=question, ql=question[0].lower() + question[1:])


def skewed_traffic(questions: list[Question], requests: int, seed: int = 0, exponent: float = 1.1) -> list[str]:
    """`requests` question texts: popularity Zipf(exponent) over a shuffled order, phrasings drawn uniformly."""
    rng = random.Random(seed)
    order = list(questions)
    rng.shuffle(order)
    weights = [1 / (rank + 1) ** exponent for rank in range(len(order))]
    picks = rng.choices(order, weights=weights, k=requests)
    return [phrase(q.text, rng.choice(PHRASINGS_A)) for q in picks]


def fresh_questions(questions: list[Question]) -> list[str]:
    """Every question once, in a phrasing workload A never uses."""
    return [phrase(q.text, PHRASINGS_B[i % len(PHRASINGS_B)]) for i, q in enumerate(questions)]


def build_prompts(service: RetrievalService, tokenizer: TextTokenizer, collection: str, texts: list[str],
                  k: int) -> list[BenchPrompt]:
    """Retrieve (hybrid, top k) and assemble each question's prompt exactly as the ask pipeline does."""
    import time

    from appliance.rag.prompt import PromptBuilder

    builder = PromptBuilder(tokenizer)
    prompts = []
    for text in texts:
        start = time.perf_counter()
        hits = service.search(text, [collection], k, "hybrid")
        retrieval_ms = (time.perf_counter() - start) * 1000
        prompt = builder.build(text, [hit.chunk for hit in hits])
        prompts.append(BenchPrompt(text, prompt.token_ids, prompt.layout(), len(prompt.passages), retrieval_ms))
    return prompts
