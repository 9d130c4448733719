"""`appliance bench rag`: the document KV cache's headline — TTFT, throughput and fidelity, side by side.

Systems: this engine in each document-cache mode (`off`, `exact`, `blend`, `reuse`) and llama.cpp's OpenAI
server (prompt cache on) on the same GGUF file, all fed the same prompt token ids (retrieval runs once,
up front; its latency is reported as its own phase). Workloads (see rag_workload.py):
  (A) skewed traffic over the whole python3.11-doc library: the first half warms each system (one segment
      per level), the second half is measured (one fresh segment per concurrency level), all drawn from the
      same Zipf popularity; the caches carry over between segments.
  (B) a pre-encoded collection (the pages that answer the questions, `appliance warm`-ed once) and questions
      in a new phrasing; a fresh system per concurrency level, so nothing but the warm disk tier is cached.
  (G) questions with gold answers (`rag_gold.py`), graded per system against the gold answer.
In (B) and (G) each level runs on each system in turn (see `Bench`).
Fidelity: the greedy answers of each system at concurrency 1 against `off` on the same prompts.
A system `blend@R` is `blend` recomputing a share R of the reused chunk tokens (default 0.15).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from appliance.bench.gold_sets import GoldQuestions
from appliance.bench.machine import describe_machine, machine_markdown
from appliance.bench.rag_corpus import ensure_collection, warm_collection
from appliance.bench.rag_fidelity import fidelity, level_summary
from appliance.bench.rag_gold import run_gold_workload
from appliance.bench.rag_systems import Completion, LlamaCppServer, OurEngine, System, run_level
from appliance.bench.rag_workload import (
    BenchPrompt,
    Question,
    build_prompts,
    fresh_questions,
    load_questions,
    skewed_traffic,
)
from appliance.bench.retrieval import CORPUS
from appliance.config import DOC_CACHE_MODES

if TYPE_CHECKING:
    from appliance.engine.loader import LoadedModel

COLLECTION = "pydoc"
WARM_COLLECTION = "pydoc-answers"
MODES = DOC_CACHE_MODES
SYSTEMS = (*MODES, "llama.cpp")
T = TypeVar("T")


class Bench:
    """Runs the workloads against every system. (B), the headline's TTFT, runs side by side in time: each
    concurrency level on each system in turn, so a drift of the machine over the run (this VM's is large)
    enters its comparisons little; (A) runs one system after another. A system that fails is reported in
    `failed` and left out of the rest of the run."""

    def __init__(self, loaded: LoadedModel, root: Path, gguf: Path, max_tokens: int, kv_cache_mb: int,
                 threads: int, say: Callable[[str], None]) -> None:
        self.loaded, self.root, self.gguf = loaded, root, gguf
        self.max_tokens, self.kv_cache_mb, self.threads, self.say = max_tokens, kv_cache_mb, threads, say
        self.failed: dict[str, str] = {}

    def system(self, name: str, kv_dir: Path | None = None) -> System:
        if name == "llama.cpp":
            return LlamaCppServer(self.gguf, self.threads)
        mode, _, ratio = name.partition("@")
        data_dir = kv_dir or Path(tempfile.mkdtemp(dir=self.root, prefix=f"kv-{mode}-"))
        return OurEngine(self.loaded, mode, data_dir, self.kv_cache_mb, float(ratio) if ratio else None)

    def attempt(self, name: str, work: Callable[[], T]) -> T | None:
        """`work()` for system `name`; None once the system has failed (now or before)."""
        if name in self.failed:
            return None
        try:
            return work()
        except Exception as exc:  # noqa: BLE001 - one system failing (a peer that cannot start, ...) is reported
            self.failed[name] = f"{type(exc).__name__}: {exc}"
            self.say(f"{name} failed: {self.failed[name]}")
            return None

    def level(self, system: System, prompts: list[BenchPrompt], concurrency: int
              ) -> tuple[list[Completion], float]:
        return asyncio.run(run_level(system, prompts, concurrency, self.max_tokens))

    def skewed(self, name: str, warmup: list[BenchPrompt], segments: dict[int, list[BenchPrompt]]
               ) -> dict[int, tuple[list[Completion], float]]:
        """Workload A on one system: warmed, then one segment per concurrency level, caches carried over. (One
        system at a time: with every system's caches alive at once, 5 engines and llama.cpp's prompt cache,
        the machine ran out of memory.)"""
        out: dict[int, tuple[list[Completion], float]] = {}
        system = self.attempt(name, partial(self.system, name))
        if system is None:
            return out
        try:
            self.say(f"A/{name}: warm-up, {len(warmup)} requests")
            self.attempt(name, partial(self.level, system, warmup, 4))
            for c, prompts in segments.items():
                self.say(f"A/{name}: concurrency {c}, {len(prompts)} requests")
                done = self.attempt(name, partial(self.level, system, prompts, c))
                if done is not None:
                    out[c] = done
        finally:
            system.close()
        return out

    def pre_encoded(self, names: list[str], segments: dict[int, list[BenchPrompt]], kv_dir: Path
                    ) -> dict[str, dict[int, tuple[list[Completion], float]]]:
        """Workload B: a fresh system per level and system (ours reads the pre-encoded disk tier), each level
        run on each system in turn."""
        out: dict[str, dict[int, tuple[list[Completion], float]]] = {name: {} for name in names}
        for c, prompts in segments.items():
            for name in names:
                self.say(f"B/{name}: concurrency {c}, {len(prompts)} requests")
                reads_tier = name.partition("@")[0] in ("blend", "reuse")
                system = self.attempt(name, partial(self.system, name, kv_dir if reads_tier else None))
                if system is None:
                    continue
                try:
                    done = self.attempt(name, partial(self.level, system, prompts, c))
                finally:
                    system.close()
                if done is not None:
                    out[name][c] = done
        return out

    def one_at_a_time(self, names: list[str], prompts: list[BenchPrompt], kv_dir: Path
                      ) -> dict[str, tuple[list[Completion], float]]:
        """`prompts` on each system of `names`, fresh and reading the tier under `kv_dir`, at concurrency 1:
        each system's answers and wall seconds (a failed system left out)."""
        runs = self.pre_encoded(names, {1: prompts}, kv_dir)
        return {name: levels[1] for name, levels in runs.items() if name not in self.failed}


def run_rag_bench(data_dir: Path | None, segment: int, max_tokens: int, concurrency: list[int],
                  systems: list[str], k: int = 5, kv_cache_mb: int = 2048, threads: int = 0,
                  say: Callable[[str], None] = lambda _: None, corpus_dir: Path = CORPUS,
                  questions: list[Question] | None = None, loaded: LoadedModel | None = None,
                  gold_questions: int = 48, gold: GoldQuestions | None = None) -> dict[str, Any]:
    """Ingest (or reuse) the corpus, build the workloads ((G): the first `gold_questions` of the `modules` gold
    set, 0: none), run every system; return all the figures. Tests pass a small `corpus_dir` (HTML or markdown
    pages), their own `questions`, `gold` questions and a `loaded` model."""
    import os

    import torch

    from appliance.engine.loader import default_model_path, load_model
    from retrieval.service import RetrievalService

    machine = describe_machine()
    questions = questions or load_questions()
    with ExitStack() as stack:
        root = data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-rag-")))
        loaded = loaded or load_model("default", root)
        threads = threads or torch.get_num_threads() or os.cpu_count() or 1
        service = RetrievalService.open(root, loaded.tokenizer, chunk_tokens=256)
        stack.callback(service.close)
        pages = sorted(p for p in corpus_dir.iterdir() if p.suffix in (".html", ".md")) if corpus_dir.is_dir() else []
        say(f"ingesting {corpus_dir} (reused when already there)")
        asked = questions[:segment]  # (B): the pages answering these questions are pre-encoded
        answers = f"{WARM_COLLECTION}-{len(asked)}"
        corpus = {COLLECTION: ensure_collection(service, COLLECTION, pages),
                  WARM_COLLECTION: ensure_collection(service, answers,
                                                     [p for p in pages if p.name in {q.page for q in asked}])}
        traffic = build_prompts(service, loaded.tokenizer, COLLECTION,
                                skewed_traffic(questions, 2 * segment * len(concurrency)), k)
        fresh = build_prompts(service, loaded.tokenizer, answers, fresh_questions(asked), k)
        kv_dir = root / "kv-warm"  # kept with the data dir: a later run only encodes what is missing
        say(f"warming {answers}: encoding every chunk into {kv_dir}")
        warm = warm_collection(loaded, service, answers, kv_dir)
        half = segment * len(concurrency)  # (A): the first half warms every system, the second is measured
        seg_a = {c: traffic[half + i * segment:half + (i + 1) * segment] for i, c in enumerate(concurrency)}
        seg_b = {c: fresh for c in concurrency}  # a fresh system per level: each question is new to it
        bench = Bench(loaded, root, default_model_path(), max_tokens, kv_cache_mb, threads, say)
        a = {name: bench.skewed(name, traffic[:half], seg_a) for name in systems}
        b = bench.pre_encoded(systems, seg_b, kv_dir)
        gold = gold or (GoldQuestions.from_set("modules", gold_questions) if gold_questions else None)
        if gold is not None:
            say(f"(G): {len(gold.texts)} questions of the {gold.name} gold set")
        graded = None if gold is None else run_gold_workload(partial(bench.one_at_a_time, systems, kv_dir=kv_dir),
                                                             service, loaded, gold, pages, k, kv_dir)
        failed = bench.failed
        runs = {w: {name: levels for name, levels in by_system.items() if name not in failed}
                for w, by_system in (("A", a), ("B", b))}
    tokenizer = loaded.tokenizer
    result: dict[str, Any] = {"machine": machine, "corpus": corpus, "warm": warm, "failed": failed, "workload": {
        "model": loaded.name, "k": k, "max_tokens": max_tokens, "segment": segment, "concurrency": concurrency,
        "prompt_tokens_mean": {w: sum(len(p.token_ids) for p in ps) / len(ps) for w, ps in
                               (("A", traffic), ("B", fresh))},
        "retrieval_ms_p50": {w: sorted(p.retrieval_ms for p in ps)[len(ps) // 2] for w, ps in
                             (("A", traffic), ("B", fresh))}}}
    if graded is not None:
        result["G"] = graded
    for w, by_system in runs.items():
        result[w] = {name: {str(c): level_summary(done, wall) for c, (done, wall) in levels.items()}
                     for name, levels in by_system.items()}
        if "off" in by_system:
            reference = by_system["off"][concurrency[0]][0]
            result[w + "_fidelity"] = {name: fidelity(reference, levels[concurrency[0]][0], tokenizer)
                                       for name, levels in by_system.items() if name != "off"}
    return result


def bench_rag(
    json_file: Annotated[Path | None, typer.Option("--json", help="also write the full result here")] = None,
    segment: Annotated[int, typer.Option(min=2, help="requests per concurrency level (A warms up with as many "
                                                    "per level first)")] = 24,
    max_tokens: Annotated[int, typer.Option(min=1, help="tokens generated per answer at most")] = 32,
    concurrency: Annotated[str, typer.Option(help="concurrency levels, comma-separated")] = "1,4,16",
    systems: Annotated[str, typer.Option(help="systems to compare, comma-separated (blend@R: blend recomputing "
                                              "a share R)")] = ",".join(SYSTEMS),
    data_dir: Annotated[Path | None, typer.Option(help="keep (and reuse) the ingested corpus and model here")
                        ] = None,
    gold: Annotated[int, typer.Option(min=0, help="questions of the modules gold set in workload (G), graded "
                                                  "against gold answers (0: skip it)")] = 48,
    docs: Annotated[bool, typer.Option("--docs/--no-docs", help="update docs/BENCHMARKS.md")] = True,
) -> None:
    """The document cache vs full prefill vs llama.cpp: TTFT, throughput and answer fidelity on real docs."""
    from rich.console import Console

    from appliance.bench.rag_report import write_rag_section

    console = Console()
    result = run_rag_bench(data_dir, segment, max_tokens, [int(c) for c in concurrency.split(",")],
                           systems.split(","), say=lambda msg: console.print(f"[dim]{msg}[/dim]"),
                           gold_questions=gold)
    console.print(machine_markdown(result["machine"]))
    console.print_json(json.dumps({k: result[k] for k in ("A", "B")}))
    if json_file is not None:
        json_file.write_text(json.dumps(result, indent=2))
    if docs:
        write_rag_section(result)
        console.print("wrote docs/BENCHMARKS.md (section RAG) and docs/bench_rag.png")
