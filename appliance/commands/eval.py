"""`appliance eval`: a golden-set regression gate over a collection, in this process (no server needed).

Builds the engine and the retrieval service the way `appliance ask` does, answers every golden question
through `AskPipeline.ask` (greedy), scores the run (`appliance.evaluation.scoring`) and, given an earlier run's
JSON, fails when a metric regressed. Exit status: 0 passed, 1 regressed, 2 bad input or could not run.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from appliance.commands.retrieval import DataDir, Embedder, Model
from appliance.config import Settings
from appliance.errors import ApplianceError
from appliance.evaluation.golden import GoldenError, GoldenItem, GoldenSet, load_golden, page_name
from appliance.evaluation.scoring import (
    GATED,
    Metrics,
    QuestionResult,
    Regression,
    answer_right,
    compare,
    metrics_from_json,
    metrics_json,
    recall_at_k,
    summarise,
)

if TYPE_CHECKING:  # the engine (torch) loads only when the command runs, so `appliance --help` stays fast
    from appliance.engine.front import EngineFront
    from appliance.engine.sampling import SamplingParams
    from appliance.rag.answering import AnswerOptions
    from appliance.rag.pipeline import AskPipeline
    from retrieval.service import RetrievalService

console = Console()
err = Console(stderr=True)
BAD_INPUT = 2
REGRESSED = 1


def _fail(message: str, code: int = BAD_INPUT) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


async def _one(pipeline: AskPipeline, item: GoldenItem, collection: str, k: int,
               params: SamplingParams) -> QuestionResult:
    from appliance.rag.pipeline import answered

    answer = await answered(pipeline.ask(item.question, [collection], k, params))
    passages, done = answer.sources.passages, answer.done
    cited = [c for c in answer.citations if c.kind == "cited"]
    ids, pages = [c.chunk_id for c in passages], [page_name(c.source) for c in passages]
    return QuestionResult(
        line=item.line, question=item.question, retrieved_chunk_ids=ids, retrieved_pages=pages,
        recall=recall_at_k(item.expected_chunk_ids, item.expected_pages, ids, pages),
        expected_answer=item.expected_answer, answer=done.answer,
        right=answer_right(done.answer, item.expected_answer) if item.expected_answer is not None else None,
        cited=len(cited), supported=sum(c.supported for c in cited), ttft_ms=done.ttft_ms)


async def _run(engine: EngineFront, service: RetrievalService, golden: GoldenSet, k: int,
               params: SamplingParams, warmup_tokens: int, options: AnswerOptions) -> list[QuestionResult]:
    """Warm retrieval and the engine (so the first question's TTFT is not a cold start), then every question in
    file order, one at a time, with a progress bar on stderr."""
    from appliance.rag.citations import marker_vocabulary
    from appliance.rag.pipeline import AskPipeline
    from appliance.server.warmup import warm_engine

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("warming up", total=len(golden.items))
        await asyncio.to_thread(service.search, "warm up", [golden.collection], 1, count=False)
        marker_vocabulary(engine.tokenizer)  # the citation constraint's vocabulary scan (~1 s), else in a TTFT
        if warmup_tokens > 0:
            await warm_engine(engine, warmup_tokens)
        progress.update(task, description="evaluating")
        pipeline, rows = AskPipeline(engine, service, options=options), []
        for item in golden.items:
            rows.append(await _one(pipeline, item, golden.collection, k, params))
            progress.advance(task)
    return rows


def _load_baseline(path: Path) -> tuple[Metrics, dict[str, Any]]:
    try:
        data = jsonlib.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        settings = data.get("settings")
        return metrics_from_json(data.get("metrics")), settings if isinstance(settings, dict) else {}
    except FileNotFoundError:
        _fail(f"{path}: no such baseline file")
    except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
        _fail(f"{path}: not the JSON of an earlier 'appliance eval --json' run ({exc})")


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _print_report(result: dict[str, Any], old: Metrics | None) -> None:
    metrics, settings = result["metrics"], result["settings"]
    table = Table("#", "question", f"recall@{settings['k']}", "right", "cited (supported)", "ttft ms",
                  title=escape(f"{settings['collection']}: {settings['golden']}"), title_justify="left")
    for row in result["questions"]:
        right = {None: "", True: "[green]yes[/]", False: "[red]no[/]"}[row["right"]]
        table.add_row(str(row["line"]), escape(row["question"][:70]), _pct(row["recall"]), right,
                      f"{row['cited']} ({row['supported']})", f"{row['ttft_ms']:.0f}")
    console.print(table)
    summary = Table("metric", "value", *(("baseline",) if old else ()), title="Metrics", title_justify="left")
    shown = [("recall", f"recall@{settings['k']} ({metrics['recall_questions']} questions)"),
             ("accuracy", f"answer accuracy ({metrics['accuracy_questions']} questions)"),
             ("citation_validity", f"citation validity ({metrics['cited_markers']} markers)"),
             ("cited_answers", "answers with a citation"), ("ttft_p50_ms", "TTFT p50 (ms)")]
    for key, label in shown:
        fmt = (lambda v: "n/a" if v is None else f"{v:.0f}") if key.endswith("_ms") else _pct
        summary.add_row(label, fmt(metrics[key]), *((fmt(getattr(old, key)),) if old else ()))
    console.print(summary)
    skipped = f"; {result['skipped']} lines for other collections skipped" if result["skipped"] else ""
    console.print(f"[dim]{metrics['questions']} questions, model {escape(settings['model'])}, "
                  f"max {settings['max_tokens']} tokens, doc cache {settings['doc_cache']}{skipped}[/]")


def _setting_warnings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [f"the baseline was run with {key} {old[key]!r}, this run with {new[key]!r}: figures may not compare"
            for key in ("collection", "k", "model", "max_tokens", "doc_cache") if key in old and old[key] != new[key]]


def eval_command(
    golden: Annotated[Path, typer.Option("--golden", help="Golden set: JSONL, one question a line")],
    collection: Annotated[str, typer.Option(
        "--collection", "-c", envvar="APPLIANCE_COLLECTION", help="The collection to evaluate")],
    baseline: Annotated[Path | None, typer.Option(help="An earlier run's JSON (--json or --out) to gate on")] = None,
    json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object on stdout")] = False,
    out: Annotated[Path | None, typer.Option(help="Also write the result's JSON to this file")] = None,
    k: Annotated[int, typer.Option(min=1, max=20, help="Passages retrieved and answered from")] = 5,
    tolerance: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Largest drop allowed in recall, accuracy and citation validity (absolute)")] = 0.05,
    ttft_tolerance: Annotated[float, typer.Option(
        min=0.0, help="Largest TTFT p50 growth allowed (relative: 0.5 is 50% slower). TTFT is noisy on a shared "
                      "CPU: compare runs from the same idle machine, or raise this")] = 0.5,
    max_tokens: Annotated[int, typer.Option(min=1, max=4096, help="Longest answer in tokens")] = 256,
    data_dir: DataDir = None,
    model: Model = None,
    embedder: Embedder = None,
) -> None:
    """Run a golden set over a collection and gate on an earlier run: a regression test for answers.

    Each line of the golden file is a JSON object: "question" (required), "collection" (lines for another
    collection are skipped and counted), "expected_answer", "expected_chunk_ids", "expected_pages" (source
    file names such as json.html); other keys are ignored. The admin feedback export writes this format.

    Every question is answered greedily, as by appliance ask, after one warm-up request. Reported: recall@k of
    the expected chunk ids (or, for a line without them, of the expected pages) among the k passages; answer
    accuracy: a short expected answer (up to 8 words) is right when it appears, normalised (lower case,
    without markers, Markdown marks or a final full stop), as a word of its own in the answer's first non-empty
    line, a longer one when the token F1 with the whole answer is at least 0.5; citation validity: the share
    of citation markers whose cited passage supports their sentence, and the share of answers with a marker;
    TTFT p50 in ms.

    With --baseline, exits 1 naming each metric that regressed (old -> new): recall, accuracy or citation
    validity lower by more than --tolerance, or TTFT p50 higher by more than --ttft-tolerance. Exit 0: no
    regression; exit 2: bad input (a missing file, a bad line, no question for the collection, an unknown
    collection) or the run could not complete. --out is written once the run is complete, except over the
    --baseline file when the gate fails.
    """
    try:
        golden_set = load_golden(golden, collection)
    except GoldenError as exc:
        _fail(str(exc))
    old, old_settings = _load_baseline(baseline) if baseline is not None else (None, {})
    if out is not None and not out.parent.is_dir():
        _fail(f"{out}: its folder does not exist")
    try:
        settings = Settings.with_flags(data_dir=data_dir, model=model, embedder=embedder)
    except ValueError as exc:
        _fail(str(exc).splitlines()[0])
    rows, model_name = _evaluate(settings, golden_set, k, max_tokens)
    metrics = summarise(rows)
    run_settings = {"collection": collection, "golden": str(golden), "k": k, "model": model_name,
                    "max_tokens": max_tokens, "doc_cache": settings.doc_cache}
    result: dict[str, Any] = {
        "settings": run_settings,
        "metrics": metrics_json(metrics),
        "skipped": golden_set.skipped,
        "questions": [asdict(row) for row in rows],
    }
    regressions: list[Regression] = []
    if old is not None and baseline is not None:
        for warning in _setting_warnings(old_settings, run_settings):
            err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
        regressions = compare(old, metrics, tolerance, ttft_tolerance)
        result["comparison"] = {"baseline": str(baseline), "tolerance": tolerance, "ttft_tolerance": ttft_tolerance,
                                "regressions": [asdict(r) for r in regressions]}
    text = jsonlib.dumps(result, ensure_ascii=False, indent=1)
    keep_baseline = (bool(regressions) and out is not None and baseline is not None
                     and out.resolve() == baseline.resolve())
    if out is not None and not keep_baseline:
        _write_atomically(out, text + "\n")
    if json:
        print(text)
    else:
        _print_report(result, old)
    _gate(regressions, baseline, keep_baseline)


def _gate(regressions: list[Regression], baseline: Path | None, kept_baseline: bool) -> None:
    if baseline is None:
        return
    if not regressions:
        err.print(f"[green]no regression[/] against {escape(str(baseline))} ({', '.join(GATED)}, ttft_p50_ms)",
                  highlight=False)
        return
    lines = "\n".join(f"  {r.describe()}" for r in regressions)
    kept = f"\n{baseline} was not overwritten" if kept_baseline else ""
    err.print(f"[bold red]regressed[/] against {escape(str(baseline))}:\n{escape(lines + kept)}", highlight=False)
    raise typer.Exit(REGRESSED)


def _evaluate(settings: Settings, golden: GoldenSet, k: int, max_tokens: int) -> tuple[list[QuestionResult], str]:
    """Open the retrieval service (checking the collection before the model loads), load the engine as
    `appliance ask` does, and answer every question. Any ApplianceError exits 2."""
    from appliance.commands.service import open_service
    from appliance.engine.async_engine import AsyncEngine
    from appliance.engine.engine import LLMEngine
    from appliance.engine.sampling import SamplingParams
    from appliance.rag.answering import answer_options

    try:
        service = open_service(settings.data_dir, settings.model, settings.embedder, 256)
    except ApplianceError as exc:
        _fail(str(exc))
    try:
        if golden.collection not in {c.name for c in service.list_collections()}:
            _fail(f"collection {golden.collection!r} does not exist in {settings.data_dir}")
        with err.status(f"loading model {settings.model} ..."):
            engine = AsyncEngine(LLMEngine.from_config(settings.one_shot_engine_config()), settings.max_queue)
        try:
            params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
            rows = asyncio.run(_run(engine, service, golden, k, params, settings.warmup_tokens,
                                    answer_options(settings)))
            return rows, engine.info.model_name
        finally:
            engine.close()
    except ApplianceError as exc:
        _fail(str(exc))
    finally:
        service.close()
