"""`appliance bench first-question`: is the first question to a freshly started server as fast as the next?

Each repeat starts `appliance serve` anew on one data dir twice, with the start-up warm-up and without it
(`APPLIANCE_WARMUP_TOKENS=0`), the order alternating between repeats; each time it records the seconds to
`/ready`, then asks the questions one after another (rotated by repeat, so each question is first once) and
keeps every answer's `retrieval_ms` and `ttft_ms` (the server's own timings, retrieval included). Figures:
medians over repeats of the time to ready, the first answer's TTFT, the later answers' TTFT (the median of
the others in that run) and their ratio. The corpus is the `demo` selection of python3.11-doc pages.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from appliance.bench.machine import describe_machine
from appliance.bench.served import serving

QUESTIONS = (
    "How do I insert an item into a sorted list and keep it sorted?",
    "Which function returns the n largest elements of a dataset?",
    "How do I create a temporary directory that is removed afterwards?",
    "How can I copy a whole directory tree?",
    "How do I read a CSV file into dictionaries?",
)
SYSTEMS = {"warm-up": None, "no warm-up": "0"}  # APPLIANCE_WARMUP_TOKENS (None: the default)


def prepare_collection(data_dir: Path, collection: str, corpus: Path) -> int:
    """Ingest the demo pages into `collection` unless it exists; returns its document count."""
    from appliance.commands.demo import demo_pages
    from appliance.engine.loader import load_tokenizer
    from retrieval.service import RetrievalService

    service = RetrievalService.open(data_dir, load_tokenizer("default", data_dir))
    try:
        if collection not in {c.name for c in service.list_collections()}:
            service.ingest_paths(collection, demo_pages(corpus))
        return len(service.list_documents(collection))
    finally:
        service.close()


def one_server(data_dir: Path, collection: str, questions: list[str], warmup_tokens: str | None,
               doc_cache: str, max_tokens: int) -> dict[str, Any]:
    """Start a server, wait for /ready, ask `questions` in order; its timings. Stops the server."""
    env = {"APPLIANCE_DATA_DIR": str(data_dir), "APPLIANCE_DOC_CACHE": doc_cache}
    if warmup_tokens is not None:
        env["APPLIANCE_WARMUP_TOKENS"] = warmup_tokens
    with serving(env) as server:
        answers = []
        for question in questions:
            body = {"question": question, "collection": collection, "k": 5, "max_tokens": max_tokens}
            reply = httpx.post(server.url + "/api/ask", json=body, timeout=300)
            reply.raise_for_status()
            answers.append({**reply.json()["timings"], "prompt_tokens": reply.json()["usage"]["prompt_tokens"]})
        return {"ready_s": server.ready_s, "answers": answers}


def summarize(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Medians over runs: ready_s, first and later TTFT and retrieval (ms), first / later TTFT."""
    def median(values: list[float]) -> float:
        return statistics.median(values)

    later_ttft = [median([a["ttft_ms"] for a in r["answers"][1:]]) for r in runs]
    ratios = [r["answers"][0]["ttft_ms"] / later for r, later in zip(runs, later_ttft, strict=True)]
    return {
        "ready_s": median([r["ready_s"] for r in runs]),
        "first_ttft_ms": median([r["answers"][0]["ttft_ms"] for r in runs]),
        "later_ttft_ms": median(later_ttft),
        "first_retrieval_ms": median([r["answers"][0]["retrieval_ms"] for r in runs]),
        "later_retrieval_ms": median([median([a["retrieval_ms"] for a in r["answers"][1:]]) for r in runs]),
        "first_over_later": median(ratios),
    }


def run_first_question_bench(data_dir: Path, corpus: Path, repeats: int, doc_cache: str = "exact",
                             max_tokens: int = 32, collection: str = "demo",
                             say: Callable[[str], None] = print) -> dict[str, Any]:
    """Every system `repeats` times, interleaved; the raw runs and their summaries."""
    documents = prepare_collection(data_dir, collection, corpus)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SYSTEMS}
    for repeat in range(repeats):
        order = list(SYSTEMS) if repeat % 2 == 0 else list(reversed(SYSTEMS))
        questions = [QUESTIONS[(repeat + i) % len(QUESTIONS)] for i in range(len(QUESTIONS))]
        for name in order:
            run = one_server(data_dir, collection, questions, SYSTEMS[name], doc_cache, max_tokens)
            say(f"repeat {repeat + 1}/{repeats} {name}: ready {run['ready_s']:.1f} s, TTFT "
                + ", ".join(f"{a['ttft_ms']:.0f}" for a in run["answers"]) + " ms")
            runs[name].append(run)
    return {"machine": describe_machine(), "documents": documents, "doc_cache": doc_cache, "repeats": repeats,
            "max_tokens": max_tokens, "runs": runs, "summary": {n: summarize(r) for n, r in runs.items()}}


def first_question_markdown(result: dict[str, Any]) -> str:
    """The "First question" section of docs/BENCHMARKS.md."""
    m = result["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, torch {m['torch']}. Load average at the start: "
        f"{m['load_average']}.",
        f"`appliance bench first-question`: a fresh `appliance serve` per run ({result['documents']} python3.11-doc "
        f"pages of the `demo` selection, doc cache `{result['doc_cache']}`, k=5, max_tokens {result['max_tokens']}), "
        f"{len(QUESTIONS)} questions asked in turn (rotated so each is first once), systems interleaved, "
        f"medians of {result['repeats']} runs. TTFT is the server's own (retrieval included).",
        "",
        "| server | to /ready s | first TTFT ms | later TTFT ms | first / later | first retrieval ms "
        "| later retrieval ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in result["summary"].items():
        lines.append(f"| {name} | {s['ready_s']:.1f} | {s['first_ttft_ms']:.0f} | {s['later_ttft_ms']:.0f} | "
                     f"{s['first_over_later']:.2f}x | {s['first_retrieval_ms']:.0f} | {s['later_retrieval_ms']:.0f} |")
    ratio = result["summary"]["warm-up"]["first_over_later"]
    lines += ["", f"Target (first TTFT <= 1.3x the later ones, with the warm-up): "
                  f"{'met' if ratio <= 1.3 else 'NOT met'} ({ratio:.2f}x)."]
    return "\n".join(lines)


def bench_first_question(
    data_dir: Annotated[Path, typer.Option(help="data dir of the servers (the demo pages are ingested there)")
                        ] = Path("bench-data/first-question"),
    corpus: Annotated[Path, typer.Option(help="python3.11-doc's library pages")] = Path(
        "/usr/share/doc/python3.11/html/library"),
    repeats: Annotated[int, typer.Option(min=1, help="fresh servers per system")] = 3,
    doc_cache: Annotated[str, typer.Option(help="the servers' APPLIANCE_DOC_CACHE")] = "exact",
    json_file: Annotated[Path | None, typer.Option("--json", help="also write the full result here")] = None,
    docs: Annotated[bool, typer.Option("--docs/--no-docs", help="update docs/BENCHMARKS.md")] = True,
) -> None:
    """First question vs the next ones on a freshly started server, with and without the start-up warm-up."""

    from rich.console import Console

    from appliance.bench.report import publish
    from appliance.errors import ApplianceError

    console = Console()
    try:
        result = run_first_question_bench(data_dir, corpus, repeats, doc_cache,
                                          say=lambda msg: console.print(f"[dim]{msg}[/dim]"))
    except ApplianceError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    publish(console, result, first_question_markdown(result), "First question", json_file, docs)
