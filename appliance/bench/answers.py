"""`appliance bench answers`: are the appliance's answers right and cited, against what a user would otherwise
build from the same model and the same passages?

Questions: the first N of a gold set (`gold_sets.py`, `modules` by default), over a collection of the pages that
answer them. Each question's top-k passages (hybrid search) are retrieved once per system the same way, so every
system reads the same passages (a variant with another k reads the top k of the same ranking).

- the baseline: a standard RAG pipeline, LangChain's classic RetrievalQA ("stuff") chat prompt with the passages'
  texts in rank order, on llama.cpp's OpenAI server with the same GGUF (`baseline`), or on this engine when
  llama-cpp-python is not installed (`baseline@ours`, also run beside it: the prompt's effect without the engine's);
- the appliance: `AskPipeline` as `/api/ask` runs it (`answering.AnswerOptions`): `default` (the settings' defaults)
  and the plain pipeline (`plain`: canonical order, the `cite` prompt, no steering) with levers joined by `+`,
  alone and combined: `relevance` (passage order), `short`, `examples` (the prompt), `steer` (steered
  citations), `kN` (N passages), `copyN` (a logit bias of N toward the passages' tokens), `guard` (no third
  copy in a row of a short block of tokens); `default+lever` pulls a lever on top of the defaults. One lever is
  the engine's, not the pipeline's: `fused` decodes as `serve` does (compiled decode, the fused layer; the other
  systems decode eagerly), its builds waited for before the first question.

Per system: accuracy (the gold answer in the answer's first line) and its ratio to the baseline's with a paired
bootstrap 95% interval; answers with a supported citation in the text (model-made or steered), and with any
supported citation (inferred ones too); the share whose evidence quote holds the gold answer, among the answers
whose passages hold it (`Gold.held_by`: as a name of its own, or qualifying the name asked about); TTFT p50.
The same figures again over the questions past the set's dev questions (`DEV_QUESTIONS`: the ones the levers and
defaults were chosen on), when any were asked. Greedy, one request at a time; a fresh engine per system.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.bench.gold_eval import accuracy_ratio
from appliance.bench.gold_sets import GoldQuestions
from appliance.bench.machine import describe_machine
from appliance.bench.rag_corpus import ensure_collection
from appliance.bench.retrieval import CORPUS
from appliance.evaluation.gold_answer import is_right, mentions
from appliance.rag.answering import AnswerOptions

if TYPE_CHECKING:
    from appliance.bench.rag_systems import System
    from appliance.engine.engine import LLMEngine
    from appliance.engine.front import EngineFront
    from appliance.engine.loader import LoadedModel
    from appliance.engine.tokenizer import TextTokenizer
    from retrieval.service import RetrievalService
    from retrieval.types import Chunk

# LangChain's classic RetrievalQA "stuff" chain, the chat prompt it picks for a chat model (system + human)
BASELINE_SYSTEM = ("Use the following pieces of context to answer the user's question. \n"
                   "If you don't know the answer, just say that you don't know, don't try to make up an answer.\n"
                   "----------------\n{context}")
DEFAULT_VARIANTS = ("default", "plain", "relevance", "k3", "short", "examples", "steer", "copy3", "guard",
                    "relevance+short+steer")
# per gold set, how many of its first questions the levers and defaults were chosen on (the rest are held out)
DEV_QUESTIONS = {"modules": 96}
PLAIN = AnswerOptions(passage_order="canonical", prompt="cite", steer_citations=False,
                      copy_bias=0.0, loop_guard=False)  # no lever pulled
_LEVERS = {"relevance": {"passage_order": "relevance"}, "short": {"prompt": "short"},
           "examples": {"prompt": "short+examples"}, "steer": {"steer_citations": True},
           "guard": {"loop_guard": True}}


@dataclass(frozen=True)
class Variant:
    """One configuration of the appliance's pipeline: its options and how many passages it reads."""

    name: str
    options: AnswerOptions
    k: int
    fused: bool = False  # decode through the fused layer (and compiled layers) as `serve` does, else eagerly


def parse_variant(spec: str, k: int) -> Variant:
    """`default` or `plain` (the base, first; `plain` may be left out) and levers joined by `+` (see the module
    doc); raises ValueError."""
    levers = spec.split("+")
    options = AnswerOptions() if levers[0] == "default" else PLAIN
    passages, fused = k, False
    for lever in levers[1:] if levers[0] in ("default", "plain") else levers:
        if lever == "fused":
            fused = True
        elif lever in _LEVERS:
            options = replace(options, **_LEVERS[lever])  # type: ignore[arg-type]
        elif lever.startswith("k") and lever[1:].isdigit() and int(lever[1:]) >= 1:
            passages = int(lever[1:])
        elif lever.startswith("copy") and _is_number(lever[4:]):
            options = replace(options, copy_bias=float(lever[4:]))
        else:
            raise ValueError(f"unknown lever {lever!r} in variant {spec!r} (default, plain, {', '.join(_LEVERS)}, kN, "
                             "copyN, fused)")
    return Variant(spec, options, passages, fused)


def _variant_engine(loaded: LoadedModel, root: Path, fused: bool) -> LLMEngine:
    """A fresh engine for one variant: eager decode, or (`fused`) serving's compiled decode, its builds done."""
    from appliance.config import EngineConfig
    from appliance.engine.engine import LLMEngine

    engine = LLMEngine(loaded, EngineConfig(data_dir=root, compiled_decode=fused))
    engine.runner.wait_for_builds()
    return engine


def _is_number(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


def baseline_prompt(tokenizer: TextTokenizer, question: str, ranked: list[Chunk]) -> list[int]:
    """The standard pipeline's prompt: the passages' texts in rank order, joined by blank lines, in the system
    message; the question as the user's."""
    from appliance.engine.tokenizer import ChatMessage

    context = "\n\n".join(c.text for c in ranked)
    return tokenizer.apply_chat_template([ChatMessage("system", BASELINE_SYSTEM.format(context=context)),
                                          ChatMessage("user", question)])


@dataclass
class Answered:
    """One system's answer to one question, judged."""

    answer: str
    ttft_ms: float
    right: bool
    gold_in_passages: bool
    cited: bool = False  # a supported citation marker in the text (model-made or steered)
    supported: bool = False  # any supported citation, inferred ones included
    evidence: str = ""  # the best evidence quote
    evidence_has_gold: bool = False


@dataclass(frozen=True)
class Gold:
    """A question's gold answer, and what it asks about (`filecmp.clear_cache` for "which module provides
    clear_cache()?": a quote with that qualified name shows the answer too)."""

    answer: str
    api: str = ""

    def held_by(self, text: str) -> bool:
        """`text` shows the answer: as a name of its own, or qualifying the name asked about."""
        qualified = bool(self.api) and self.api.startswith(self.answer + ".") and self.api in text
        return qualified or mentions(text, self.answer)


def _passages_hold(chunks: list[Chunk], gold: Gold) -> bool:
    return any(gold.held_by(c.text) for c in chunks)


async def _ask(engine: EngineFront, service: RetrievalService, variant: Variant, collection: str, max_tokens: int,
               question: str, gold: Gold) -> Answered:
    from appliance.engine.sampling import SamplingParams
    from appliance.rag.pipeline import AskPipeline, answered

    pipeline = AskPipeline(engine, service, options=variant.options)
    got = await answered(pipeline.ask(question, [collection], variant.k, SamplingParams(max_tokens=max_tokens,
                                                                                        temperature=0.0)))
    answer, best = got.done.answer, got.evidence[0].quote if got.evidence else ""
    return Answered(answer, got.done.ttft_ms, is_right(answer, gold.answer),
                    _passages_hold(list(got.sources.passages), gold),
                    any(c.kind == "cited" and c.supported for c in got.citations),
                    any(c.supported for c in got.citations), best, bool(best) and gold.held_by(best))


async def _baseline(system: System, tokenizer: TextTokenizer, service: RetrievalService, collection: str, k: int,
                    max_tokens: int, question: str, gold: Gold) -> Answered:
    from appliance.bench.rag_workload import BenchPrompt
    from appliance.engine.doc_cache.layout import PromptLayout

    started = time.perf_counter()
    ranked = [hit.chunk for hit in service.search_phrasings([question], [collection], k)]
    ids = baseline_prompt(tokenizer, question, ranked)
    retrieval_ms = (time.perf_counter() - started) * 1000
    done = await system.complete(BenchPrompt(question, ids, PromptLayout(len(ids), ()), k, retrieval_ms), max_tokens)
    return Answered(done.text, retrieval_ms + done.ttft_s * 1000, is_right(done.text, gold.answer),
                    _passages_hold(ranked, gold))


def summarize(rows: list[Answered], reference: list[Answered] | None) -> dict[str, Any]:
    """A system's figures over its answers (`reference`: the baseline's, for the accuracy ratio)."""
    held = [r for r in rows if r.gold_in_passages]
    figures: dict[str, Any] = {
        "accuracy": sum(r.right for r in rows) / len(rows),
        "cited": sum(r.cited for r in rows) / len(rows),
        "supported": sum(r.supported for r in rows) / len(rows),
        "evidence_has_gold": sum(r.evidence_has_gold for r in held) / len(held) if held else None,
        "gold_in_passages": len(held),
        "ttft_p50_ms": statistics.median(r.ttft_ms for r in rows),
    }
    if reference is not None:
        ratio = accuracy_ratio([r.right for r in reference], [r.right for r in rows])
        figures |= {key: ratio[key] for key in ("ratio", "ratio_low", "ratio_high", "same_verdict")}
    return figures


async def _all(gold: GoldQuestions, answer: Callable[[str, Gold], Awaitable[Answered]]) -> list[Answered]:
    """Every question answered in turn (one at a time)."""
    apis = gold.apis or [""] * len(gold.texts)
    return [await answer(q, Gold(g, api)) for q, g, api in zip(gold.texts, gold.golds, apis, strict=True)]


def _llama_cpp_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def run_answers_bench(corpus: Path = CORPUS, data_dir: Path | None = None, question_set: str = "modules",
                      questions: int = 240, k: int = 5, max_tokens: int = 64,
                      variants: tuple[str, ...] = DEFAULT_VARIANTS, llama_cpp: bool = True,
                      loaded: LoadedModel | None = None, gold: GoldQuestions | None = None,
                      say: Callable[[str], None] = print) -> dict[str, Any]:
    """Ingest the answering pages (into `data_dir`, reused when it holds them; a temporary dir by default), then
    answer every question with each system; returns the figures and every answer. `gold` overrides the set."""
    import torch

    from appliance.bench.rag_systems import LlamaCppServer, OurEngine
    from appliance.engine.async_engine import AsyncEngine
    from appliance.engine.loader import load_model, resolve_model_path
    from retrieval.service import RetrievalService

    gold = gold or GoldQuestions.from_set(question_set, questions)
    parsed = [parse_variant(v, k) for v in variants]
    pages = sorted(p for p in corpus.glob("*.html") if p.name in set(gold.pages))
    collection = f"answers-{gold.name}-{len(gold.texts)}"
    with tempfile.TemporaryDirectory() as tmp:
        root = data_dir or Path(tmp)
        loaded = loaded or load_model("default", root)
        service = RetrievalService.open(root, loaded.tokenizer)
        try:
            ingested = ensure_collection(service, collection, pages)
            say(f"collection {collection}: {ingested['documents']} pages, {ingested['chunks']} chunks")
            baselines: list[tuple[str, System]] = []
            if llama_cpp and _llama_cpp_installed():
                # no prompt cache: every prompt is new (its RAM cache grew past 15 GB over 96 prompts here)
                baselines.append(("baseline", LlamaCppServer(resolve_model_path("default"), torch.get_num_threads(),
                                                             cache_bytes=None)))
            baselines.append(("baseline@ours", OurEngine(loaded, "off", root, 512)))
            answers: dict[str, list[Answered]] = {}
            try:
                for name, system in baselines:
                    answers[name] = asyncio.run(_all(gold, partial(_baseline, system, loaded.tokenizer, service,
                                                                   collection, k, max_tokens)))
                    say(f"{name}: {sum(a.right for a in answers[name])}/{len(gold.texts)} right")
            finally:
                for _, system in baselines:
                    system.close()
            for variant in parsed:  # a fresh engine each: no variant reads KV another one's requests left
                engine = AsyncEngine(_variant_engine(loaded, root, variant.fused))
                try:
                    answers[variant.name] = asyncio.run(_all(gold, partial(_ask, engine, service, variant,
                                                                           collection, max_tokens)))
                finally:
                    engine.close()
                say(f"{variant.name}: {sum(a.right for a in answers[variant.name])}/{len(gold.texts)} right")
        finally:
            service.close()
    reference = next(iter(answers.values()))
    dev = DEV_QUESTIONS.get(gold.name, len(gold.texts))  # the questions past the dev set are held out
    held_out = {name: summarize(rows[dev:], reference[dev:]) for name, rows in answers.items()
                } if dev < len(gold.texts) else {}
    return {"machine": describe_machine(), "set": gold.name, "questions": len(gold.texts), "corpus": ingested,
            "k": k, "max_tokens": max_tokens, "reference": next(iter(answers)),
            "systems": {name: summarize(rows, reference) for name, rows in answers.items()},
            "held_out_from": dev if held_out else None, "held_out": held_out,
            "variants": {v.name: {"k": v.k, **vars(v.options)} for v in parsed},
            "answers": {name: [vars(r) for r in rows] for name, rows in answers.items()}}
