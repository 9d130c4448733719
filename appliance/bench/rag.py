"""`appliance bench rag`: answer latency and citation quality of the ask pipeline on real docs.

Corpus: Debian's `python3.11-doc` HTML library pages, ingested once (chunks of <= 256 tokens); questions:
the hand-written set of the retrieval benchmark (`data/pydoc_questions.json`). The engine is loaded once
(default config: bfloat16 on CPU, prefix caching on). For each concurrency c the question set, cycled to at
least max(2c, N) requests, goes through `AskPipeline.ask` (k=5, greedy) with at most c requests in flight.

Per level: TTFT and end-to-end latency p50/p99 over the requests (percentiles over requests of one pass,
not medians of repeats), aggregate throughput, KV tokens reused vs computed, the share of answers whose
`[n]` markers are all within 1..k, and the share of cited sentences marked supported. These are the
baselines the document KV cache will improve. Results go to the "RAG" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from appliance.bench.engine import wait_for_idle
from appliance.bench.machine import describe_machine, machine_markdown
from appliance.bench.retrieval import CORPUS, QUESTIONS

if TYPE_CHECKING:
    from appliance.engine.engine import LLMEngine
    from appliance.rag.pipeline import AskPipeline
    from retrieval.service import RetrievalService

COLLECTION = "pydoc"
CONCURRENCY = (1, 4, 16)
SUFFIXES = (".html", ".md")
_ANY_MARKER = re.compile(r"\[(\d+)\]")  # any bracketed number, valid or not


@dataclass
class Sample:
    """What one answered question measured."""

    ttft_ms: float
    total_ms: float
    queue_ms: float
    retrieval_ms: float
    completion_tokens: int
    tokens_reused: int
    tokens_computed: int
    markers_valid: bool  # every [n] in the answer is within 1..k (true when there is none)
    has_marker: bool
    cited: int  # citations of kind "cited"
    supported: int  # ... of which marked supported


def ensure_corpus(service: RetrievalService, corpus: Path, collection: str = COLLECTION) -> dict[str, Any]:
    """Ingest the pages of `corpus` into `collection` unless it already holds documents (then reuse them)."""
    files = sorted(p for p in corpus.iterdir() if p.suffix in SUFFIXES) if corpus.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no HTML or markdown pages in {corpus}: apt-get install python3.11-doc")
    reused = any(c.name == collection for c in service.list_collections()) and bool(
        service.list_documents(collection))
    start = time.perf_counter()
    if not reused:
        service.ingest_paths(collection, files)
    docs = service.list_documents(collection)
    return {"pages": len(files), "documents": len(docs), "chunks": sum(d.chunks for d in docs),
            "ingest_s": None if reused else round(time.perf_counter() - start, 1)}


async def ask_one(pipeline: AskPipeline, question: str, k: int, max_tokens: int,
                  collection: str = COLLECTION) -> Sample:
    """Ask one question greedily and read its timings and citations off the event stream."""
    from appliance.engine.sampling import SamplingParams
    from appliance.rag.pipeline import CitationsEvent, DoneEvent, SourcesEvent

    given, citations, done = 0, [], None
    async for event in pipeline.ask(question, [collection], k, SamplingParams(max_tokens, temperature=0.0)):
        if isinstance(event, SourcesEvent):
            given = len(event.passages)
        elif isinstance(event, CitationsEvent):
            citations = [c for c in event.citations if c.kind == "cited"]
        elif isinstance(event, DoneEvent):
            done = event
    assert done is not None
    markers = [int(n) for n in _ANY_MARKER.findall(done.answer)]
    return Sample(done.ttft_ms, done.total_ms, done.queue_ms, done.retrieval_ms, done.completion_tokens,
                  done.tokens_reused, done.tokens_computed, all(1 <= n <= given for n in markers),
                  bool(markers), len(citations), sum(c.supported for c in citations))


def summarize(samples: Sequence[Sample], wall_s: float) -> dict[str, float]:
    """Percentiles over requests, aggregate throughput, KV reuse and citation shares of one level."""
    ttft = [s.ttft_ms for s in samples]
    total = [s.total_ms for s in samples]
    reused, computed = sum(s.tokens_reused for s in samples), sum(s.tokens_computed for s in samples)
    with_marker = [s for s in samples if s.has_marker]
    cited = sum(s.cited for s in samples)
    return {
        "requests": len(samples),
        "wall_s": round(wall_s, 2),
        "ttft_p50_ms": float(np.percentile(ttft, 50)),
        "ttft_p99_ms": float(np.percentile(ttft, 99)),
        "e2e_p50_ms": float(np.percentile(total, 50)),
        "e2e_p99_ms": float(np.percentile(total, 99)),
        "queue_p50_ms": float(np.percentile([s.queue_ms for s in samples], 50)),
        "retrieval_p50_ms": float(np.percentile([s.retrieval_ms for s in samples], 50)),
        "requests_per_s": len(samples) / wall_s,
        "output_tokens_per_s": sum(s.completion_tokens for s in samples) / wall_s,
        "tokens_reused": reused,
        "tokens_computed": computed,
        "reused_share": reused / max(1, reused + computed),
        "answers_all_valid_share": sum(s.markers_valid for s in samples) / len(samples),
        "answers_with_marker_share": len(with_marker) / len(samples),
        "marked_answers_all_valid_share": (sum(s.markers_valid for s in with_marker) / len(with_marker)
                                           if with_marker else 1.0),
        "cited_sentences": cited,
        "supported_share": sum(s.supported for s in samples) / cited if cited else 0.0,
    }


async def run_level(pipeline: AskPipeline, questions: Sequence[str], concurrency: int, k: int,
                    max_tokens: int) -> dict[str, float]:
    """Ask max(2c, N) questions (cycled) with at most `concurrency` in flight; summarize the level."""
    total = max(2 * concurrency, len(questions))
    gate = asyncio.Semaphore(concurrency)

    async def gated(question: str) -> Sample:
        async with gate:
            return await ask_one(pipeline, question, k, max_tokens)

    start = time.perf_counter()
    samples = await asyncio.gather(*(gated(questions[i % len(questions)]) for i in range(total)))
    return summarize(samples, time.perf_counter() - start)


def load_questions(limit: int) -> list[str]:
    """The first `limit` questions of the retrieval benchmark's hand-written set."""
    return [q["question"] for q in json.loads(QUESTIONS.read_text())["questions"]][:limit]


def run_rag_bench(
    corpus: Path = CORPUS,
    questions: Sequence[str] | None = None,
    concurrency: Sequence[int] = CONCURRENCY,
    max_tokens: int = 128,
    k: int = 5,
    data_dir: Path | None = None,
    chunk_tokens: int = 256,
    engine: LLMEngine | None = None,
    wait_idle_s: float = 0.0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Ingest (or reuse) the corpus, load the engine once and measure every concurrency level.

    `data_dir` holds the model conversion cache and the ingested collection (a temporary dir when None);
    `engine` replaces the default engine (tests pass a small float32 one).
    """
    from appliance.config import EngineConfig
    from appliance.engine.async_engine import AsyncEngine
    from appliance.engine.engine import LLMEngine
    from appliance.rag.pipeline import AskPipeline
    from retrieval.service import RetrievalService

    say = progress or (lambda _: None)
    questions = list(questions) if questions is not None else load_questions(40)
    machine = describe_machine()
    with ExitStack() as stack:
        root = data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-rag-")))
        start = time.perf_counter()
        engine = engine or LLMEngine.from_config(EngineConfig(data_dir=root))
        load_s = time.perf_counter() - start
        service = RetrievalService.open(root, engine.tokenizer, chunk_tokens=chunk_tokens)
        stack.callback(service.close)
        say(f"engine loaded in {load_s:.1f} s; ingesting {corpus} (reused when already there)")
        corpus_info = {**ensure_corpus(service, corpus), "chunk_tokens": chunk_tokens}
        async_engine = AsyncEngine(engine, max_queue=max(256, 2 * max(concurrency)))
        stack.callback(async_engine.close)
        pipeline = AskPipeline(async_engine, service)
        levels: dict[str, dict[str, float]] = {}

        async def measure() -> None:
            await ask_one(pipeline, "What is a warm-up question?", k, min(8, max_tokens))  # not counted
            for c in concurrency:
                if wait_idle_s > 0:
                    wait_for_idle(wait_idle_s)
                say(f"concurrency {c}: {max(2 * c, len(questions))} requests")
                levels[str(c)] = await run_level(pipeline, questions, c, k, max_tokens)

        asyncio.run(measure())
    return {
        "machine": machine,
        "workload": {"model": engine.model_name, "dtype": str(engine.dtype).removeprefix("torch."),
                     "prefix_caching": engine.config.enable_prefix_caching, "k": k, "max_tokens": max_tokens,
                     "questions": len(questions), "load_s": round(load_s, 1), "corpus": corpus_info},
        "levels": levels,
    }


def rag_markdown(result: dict[str, Any]) -> str:
    """The "RAG" section body for docs/BENCHMARKS.md."""
    w, c = result["workload"], result["workload"]["corpus"]
    ingest = "reused from an earlier run" if c["ingest_s"] is None else f"ingested in {c['ingest_s']:.0f} s"
    lines = [
        f"Ask pipeline end to end (`AskPipeline.ask`: hybrid retrieval, prompt from stored tokens, constrained "
        f"citations, check) on Debian python3.11-doc: {c['documents']} pages -> {c['chunks']} chunks of <= "
        f"{c['chunk_tokens']} tokens ({ingest}). Questions: the {w['questions']} hand-written questions of "
        f"{QUESTIONS.name}, cycled to max(2c, {w['questions']}) requests per level, at most c in flight. "
        f"Model `{w['model']}` {w['dtype']}, prefix caching {'on' if w['prefix_caching'] else 'off'}, k={w['k']}, "
        f"greedy, max_tokens={w['max_tokens']}. Latencies are percentiles over the requests of one pass "
        "(not medians of repeats; with ~40 requests p99 is close to the slowest one); TTFT and end to end "
        "include retrieval and queueing.",
        "",
        "| concurrency | requests | TTFT p50 ms | TTFT p99 ms | e2e p50 ms | e2e p99 ms | req/s | output tok/s "
        "| KV reused / computed | answers with all [n] valid | answers citing | cited sentences supported |",
        "|" + "|".join(["---:"] * 12) + "|",
    ]
    for conc, lv in result["levels"].items():
        lines.append(
            f"| {conc} | {lv['requests']} | {lv['ttft_p50_ms']:.0f} | {lv['ttft_p99_ms']:.0f} | "
            f"{lv['e2e_p50_ms']:.0f} | {lv['e2e_p99_ms']:.0f} | {lv['requests_per_s']:.2f} | "
            f"{lv['output_tokens_per_s']:.1f} | {lv['tokens_reused']} / {lv['tokens_computed']} "
            f"({lv['reused_share']:.0%}) | {lv['answers_all_valid_share']:.0%} | "
            f"{lv['answers_with_marker_share']:.0%} | {lv['supported_share']:.0%} of {lv['cited_sentences']} |")
    first = next(iter(result["levels"].values()))
    lines += [
        "",
        f"Prompt tokens per request (mean, concurrency {next(iter(result['levels']))}): "
        f"{first['tokens_computed'] / first['requests']:.0f} computed, "
        f"{first['tokens_reused'] / first['requests']:.0f} reused from the prefix cache.",
        "",
        "KV reused = prompt tokens served from the prefix cache (today: the shared system prefix, plus whole "
        "prompts still cached); the document KV cache issue should raise it and cut TTFT. \"answers with all "
        "[n] valid\" counts an answer without markers as valid; \"answers citing\" is the share with at least "
        "one marker.",
        "",
        "Machine:",
        "",
        machine_markdown(result["machine"]),
        "",
        "Reproduce: `appliance bench rag` (`--questions 20` for a shorter run; `--data-dir DIR` keeps the "
        "ingested corpus and converted model for the next run; `--json FILE` keeps the raw figures).",
    ]
    return "\n".join(lines)


def write_rag_section(result: dict[str, Any], path: Path = Path("docs/BENCHMARKS.md")) -> None:
    """Rewrite the "RAG" section of `path`, keeping every other section."""
    from appliance.bench.report import update_section

    update_section(path, "RAG", rag_markdown(result), result["machine"])


def bench_rag(
    json_file: Annotated[Path | None, typer.Option("--json", help="also write the full result here")] = None,
    questions: Annotated[int, typer.Option(min=1, help="questions of the hand-written set to use")] = 40,
    max_tokens: Annotated[int, typer.Option(min=1, help="tokens generated per answer at most")] = 128,
    concurrency: Annotated[str, typer.Option(help="concurrency levels, comma-separated")] = "1,4,16",
    data_dir: Annotated[Path | None, typer.Option(help="keep (and reuse) the ingested corpus and model here")
                        ] = None,
    docs: Annotated[bool, typer.Option("--docs/--no-docs", help="update docs/BENCHMARKS.md")] = True,
    wait_idle: Annotated[float, typer.Option(help="seconds to wait for an idle machine before each level")
                         ] = 60.0,
) -> None:
    """TTFT and end-to-end latency at several concurrencies, citation validity and support: the RAG baseline."""
    from rich.console import Console

    console = Console()
    result = run_rag_bench(questions=load_questions(questions), max_tokens=max_tokens,
                           concurrency=[int(c) for c in concurrency.split(",")], data_dir=data_dir,
                           wait_idle_s=wait_idle, progress=lambda msg: console.print(f"[dim]{msg}[/dim]"))
    console.print(machine_markdown(result["machine"]))
    console.print_json(json.dumps(result["levels"]))
    if json_file is not None:
        json_file.write_text(json.dumps(result, indent=2))
    if docs:
        write_rag_section(result)
        console.print("wrote docs/BENCHMARKS.md (section RAG)")
