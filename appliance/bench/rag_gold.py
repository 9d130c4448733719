"""Workload (G) of `appliance bench rag`: questions with gold answers, each system graded on whether its answer
is right (not on whether it matches `off`'s).

The first questions of a gold set (`gold_sets.py`, `modules` by default); the pages that answer them ingested
into their own collection and pre-encoded as in (B); every system answers the same prompts at concurrency 1,
fresh. Per system: accuracy (the gold answer in the answer's first line), its ratio to `off`'s with a paired
bootstrap 95% interval, the share of questions with `off`'s verdict, TTFT p50, and each question's verdict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.bench.gold_eval import accuracy_ratio, right_answers
from appliance.bench.gold_sets import load_set
from appliance.bench.rag_fidelity import level_summary
from appliance.bench.rag_workload import build_prompts

if TYPE_CHECKING:
    from appliance.bench.rag import Bench
    from appliance.engine.tokenizer import TextTokenizer
    from retrieval.service import RetrievalService


@dataclass(frozen=True)
class GoldQuestions:
    """The questions of (G): their texts, the pages that answer them, their gold answers; `name` says where
    they come from (a gold set's name)."""

    name: str
    texts: list[str]
    pages: list[str]
    golds: list[str]

    @classmethod
    def from_set(cls, name: str, limit: int) -> GoldQuestions:
        questions = load_set(name, limit)
        return cls(name, [q.question for q in questions], [q.page for q in questions], [q.answer for q in questions])


def run_gold_workload(bench: Bench, service: RetrievalService, tokenizer: TextTokenizer, systems: list[str],
                      questions: GoldQuestions, pages: list[Path], k: int, kv_dir: Path,
                      ensure: Callable[[RetrievalService, str, list[Path]], dict[str, Any]],
                      warm: Callable[[RetrievalService, str, Path], dict[str, Any]]) -> dict[str, Any]:
    """Ingest (`ensure`) and pre-encode (`warm`) the pages among `pages` that answer `questions`, then run
    every system on their prompts (`Bench.pre_encoded`, concurrency 1) and grade the answers."""
    collection = f"pydoc-gold-{questions.name}-{len(questions.texts)}"
    answering = [p for p in pages if p.name in set(questions.pages)]
    corpus = ensure(service, collection, answering)
    prompts = build_prompts(service, tokenizer, collection, questions.texts, k)
    encoded = warm(service, collection, kv_dir)
    runs = bench.pre_encoded(systems, {1: prompts}, kv_dir)
    graded: dict[str, dict[str, Any]] = {}
    verdicts = {name: right_answers([c.text for c in levels[1][0]], questions.golds) for name, levels in runs.items()
                if name not in bench.failed}
    for name, right in verdicts.items():
        done, wall = runs[name][1]
        graded[name] = {"ttft_p50_ms": level_summary(done, wall)["ttft_p50_ms"], "accuracy": sum(right) / len(right),
                        "right": right}
        if "off" in verdicts and name != "off":
            graded[name] |= accuracy_ratio(verdicts["off"], right)
    return {"set": questions.name, "questions": len(questions.texts), "corpus": corpus, "warm": encoded,
            "prompt_tokens_mean": sum(len(p.token_ids) for p in prompts) / len(prompts), "systems": graded}
