"""`appliance ask`: answer one question over a collection in this process (no server needed).

Loads the engine from the settings and the retrieval service of the data dir, streams the answer to the
terminal, then prints the numbered sources and the citations; `--json` prints the non-stream JSON of
`POST /api/ask` instead.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from appliance.commands.retrieval import DataDir, Embedder, Model
from appliance.config import Settings
from appliance.errors import ApplianceError

if TYPE_CHECKING:  # the engine (torch) loads only when the command runs, so `appliance --help` stays fast
    from appliance.engine.sampling import SamplingParams
    from appliance.rag.pipeline import AskPipeline

console = Console()
err = Console(stderr=True)


async def _answer(pipeline: AskPipeline, question: str, collection: str, k: int, params: SamplingParams,
                  as_json: bool) -> None:
    from appliance.rag.answer_json import Answer, citations_json, collect, done_json, sources_json
    from appliance.rag.pipeline import CitationsEvent, DoneEvent, SourcesEvent, TokenEvent

    events = pipeline.ask(question, [collection], k, params)
    sources = await anext(events)
    assert isinstance(sources, SourcesEvent)
    if as_json:
        print(jsonlib.dumps(await collect(Answer(sources, events)), ensure_ascii=False, indent=2))
        return
    citations: list[dict] = []
    async for event in events:
        if isinstance(event, TokenEvent):
            console.print(event.text, end="", highlight=False, markup=False)
        elif isinstance(event, CitationsEvent):
            citations = citations_json(event.citations)
        elif isinstance(event, DoneEvent):
            console.print()
            _print_sources(sources_json(sources), citations, done_json(event))


def _print_sources(sources: list[dict], citations: list[dict], done: dict) -> None:
    table = Table("#", "title / section", "page", "passage", title="Sources", title_justify="left")
    for s in sources:
        where = " > ".join((s["title"], *s["heading_path"][1:]))
        table.add_row(str(s["n"]), where, str(s["page"] or ""), " ".join(s["text"].split())[:120])
    console.print(table)
    for c in citations:
        mark = "[green]supported[/]" if c["supported"] else "[yellow]not supported[/]"
        console.print(f"[bold][{c['n']}][/] {c['title']} ({c['kind']}, {mark})")
    for e in done["evidence"]:
        console.print(f"[bold]evidence [{e['n']}][/] {e['title']}: ", end="")
        console.print(f"“{e['quote']}”", markup=False, highlight=False)
    kv, timings = done["kv"], done["timings"]
    console.print(f"[dim]{done['usage']['completion_tokens']} tokens; ttft {timings['ttft_ms']:.0f} ms, "
                  f"total {timings['total_ms']:.0f} ms; prompt tokens computed {kv['tokens_computed']}, "
                  f"reused {kv['tokens_reused']}[/]")


def ask(
    question: Annotated[str, typer.Argument(help="The question")],
    collection: Annotated[str, typer.Option("--collection", "-c", envvar="APPLIANCE_COLLECTION")],
    k: Annotated[int, typer.Option(min=1, max=20, help="Passages to answer from")] = 5,
    json: Annotated[bool, typer.Option("--json", help="Print the JSON of POST /api/ask")] = False,
    max_tokens: Annotated[int, typer.Option(min=1, max=4096, help="Longest answer in tokens")] = 256,
    temperature: Annotated[float, typer.Option(min=0.0, max=2.0)] = 0.0,
    data_dir: DataDir = None,
    model: Model = None,
    embedder: Embedder = None,
) -> None:
    """Answer a question from a collection, with numbered sources and checked citations."""
    from appliance.engine.async_engine import AsyncEngine
    from appliance.engine.engine import LLMEngine
    from retrieval.service import RetrievalService

    settings = Settings.with_flags(data_dir=data_dir, model=model, embedder=embedder)
    try:
        with err.status(f"loading model {settings.model} ..."):
            engine = AsyncEngine(LLMEngine.from_config(settings.one_shot_engine_config()), settings.max_queue)
    except ApplianceError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    try:
        service = RetrievalService.open(settings.data_dir, engine.tokenizer, settings.embedder,
                                        device=settings.retrieval_device)
    except ApplianceError as exc:
        engine.close()
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    try:
        from appliance.engine.sampling import SamplingParams
        from appliance.rag.answering import answer_options
        from appliance.rag.pipeline import AskPipeline

        params = SamplingParams(max_tokens=max_tokens, temperature=temperature)
        pipeline = AskPipeline(engine, service, options=answer_options(settings))
        asyncio.run(_answer(pipeline, question, collection, k, params, json))
    except ApplianceError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    finally:
        engine.close()
        service.close()
