"""Workload (G) of `appliance bench rag`: questions with gold answers, each system graded on whether its answer
is right (not on whether it matches `off`'s).

The first questions of a gold set (`gold_sets.py`, `modules` by default); the pages that answer them ingested
into their own collection and pre-encoded as in (B); every system answers the same prompts at concurrency 1,
fresh. Per system: accuracy (the gold answer in the answer's first line), its ratio to `off`'s with a paired
bootstrap 95% interval, the share of questions with `off`'s verdict, TTFT p50, and each question's verdict.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.bench.gold_eval import accuracy_ratio, right_answers
from appliance.bench.gold_sets import GoldQuestions
from appliance.bench.rag_corpus import ensure_collection, warm_collection
from appliance.bench.rag_fidelity import level_summary
from appliance.bench.rag_workload import build_prompts

if TYPE_CHECKING:
    from appliance.bench.rag_systems import Completion
    from appliance.bench.rag_workload import BenchPrompt
    from appliance.engine.loader import LoadedModel
    from retrieval.service import RetrievalService


def run_gold_workload(run: Callable[[list[BenchPrompt]], dict[str, tuple[list[Completion], float]]],
                      service: RetrievalService, loaded: LoadedModel, questions: GoldQuestions, pages: list[Path],
                      k: int, kv_dir: Path) -> dict[str, Any]:
    """Ingest and pre-encode (into `kv_dir`) the pages among `pages` that answer `questions`, then `run` every
    system on their prompts (each system's answers and wall seconds; a failed system absent) and grade them."""
    collection = f"pydoc-gold-{questions.name}-{len(questions.texts)}"
    answering = [p for p in pages if p.name in set(questions.pages)]
    corpus = ensure_collection(service, collection, answering)
    prompts = build_prompts(service, loaded.tokenizer, collection, questions.texts, k)
    encoded = warm_collection(loaded, service, collection, kv_dir)
    runs = run(prompts)
    graded: dict[str, dict[str, Any]] = {}
    verdicts = {name: right_answers([c.text for c in done], questions.golds) for name, (done, _) in runs.items()}
    for name, right in verdicts.items():
        done, wall = runs[name]
        graded[name] = {"ttft_p50_ms": level_summary(done, wall)["ttft_p50_ms"], "accuracy": sum(right) / len(right),
                        "right": right}
        if "off" in verdicts and name != "off":
            graded[name] |= accuracy_ratio(verdicts["off"], right)
    return {"set": questions.name, "questions": len(questions.texts), "corpus": corpus, "warm": encoded,
            "prompt_tokens_mean": sum(len(p.token_ids) for p in prompts) / len(prompts), "systems": graded}
