"""`appliance ingest` and `appliance search`: the retrieval layer from the command line.

Both work whether or not a server runs on the same data dir (the store and the index file locks make
that safe; the server picks the new documents up at its next search). Every option is also the env
var `APPLIANCE_<NAME>`; unset options come from `appliance.config.Settings`.
"""

from __future__ import annotations

import json as jsonlib
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from appliance.commands.service import open_service
from appliance.config import Settings
from appliance.errors import ApplianceError
from appliance.priority import BACKGROUND_NICE, lower_priority
from retrieval.filters import FilterError, SearchFilters, parse_tag_args
from retrieval.service import RetrievalService
from retrieval.types import JobStatus

console = Console()
err = Console(stderr=True)


class Mode(StrEnum):
    hybrid = "hybrid"
    vector = "vector"
    bm25 = "bm25"


def _summary(status: JobStatus) -> None:
    done = [f for f in status.files if f.state == "done"]
    skipped = [f for f in status.files if f.state == "skipped"]
    failed = [f for f in status.files if f.state == "failed"]
    chunks = sum(f.chunks for f in done)
    console.print(
        f"[bold]{len(done)} ingested[/] ({chunks} chunks), {len(skipped)} skipped, "
        f"[{'red' if failed else 'green'}]{len(failed)} failed[/] — job {status.job_id}: {status.state}"
    )
    for label, files in (("skipped", skipped), ("failed", failed), ("ingested, but", status.warnings)):
        for f in files:
            console.print(
                f"  [dim]{label}[/] {f.error}"
                if f.error and f.source in f.error
                else f"  [dim]{label}[/] {f.source}: {f.error}"
            )


def ingest_with_progress(service: RetrievalService, collection: str, paths: list[Path],
                         tags: dict[str, str] | None = None) -> JobStatus:
    """Ingest `paths` into `collection` (created if missing) in this process, every document tagged with
    `tags`, with a progress bar and a summary of what was ingested, skipped and failed."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[current]}", style="dim"),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("ingesting", total=None, current="")
        status = service.ingest_paths(
            collection,
            paths,
            progress=lambda e: progress.update(task, completed=e.done, total=e.total, current=e.source[-60:]),
            tags=tags,
        )
    _summary(status)
    return status


DataDir = Annotated[Path | None, typer.Option(envvar="APPLIANCE_DATA_DIR", help="Data dir [default: ./data]")]
Model = Annotated[str | None, typer.Option(envvar="APPLIANCE_MODEL", help="LLM whose tokenizer chunks [default]")]
Embedder = Annotated[
    str | None, typer.Option(envvar="APPLIANCE_EMBEDDER", help="'default' or a local sentence-transformers folder")
]
ChunkTokens = Annotated[int, typer.Option(envvar="APPLIANCE_CHUNK_TOKENS", help="Tokens per chunk", min=16)]
Tags = Annotated[list[str] | None, typer.Option("--tag", help="key=value; repeatable")]


def _tags(pairs: list[str] | None) -> dict[str, str]:
    try:
        return parse_tag_args(pairs or [])
    except FilterError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from exc


def ingest(
    paths: Annotated[list[Path], typer.Argument(exists=True, help="Files, folders and .zip archives")],
    collection: Annotated[
        str, typer.Option("--collection", "-c", envvar="APPLIANCE_COLLECTION", help="Collection (created if missing)")
    ],
    warm: Annotated[bool, typer.Option(envvar="APPLIANCE_WARM", help="Pre-encode the chunks' KV")] = False,
    tag: Tags = None,
    data_dir: DataDir = None,
    model: Model = None,
    embedder: Embedder = None,
    chunk_tokens: ChunkTokens = 256,
) -> None:
    """Ingest documents into a collection: parse, chunk, embed and index them (progress bar + summary); every
    document gets the `--tag key=value` tags (filters select on them)."""
    tags = _tags(tag)
    lower_priority(BACKGROUND_NICE, whole_process=True)  # a serving engine's answers come first
    try:
        service = open_service(data_dir, model, embedder, chunk_tokens)
    except ApplianceError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    try:
        status = ingest_with_progress(service, collection, paths, tags)
        if warm and status.state == "done":
            from appliance.commands.warm import report_warm, warm_collection

            settings = Settings.with_flags(data_dir=data_dir, model=model)
            report_warm(collection, warm_collection(settings, service, collection), settings)
    except ApplianceError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    finally:
        service.close()
    if status.state != "done" or status.errors:
        raise typer.Exit(1)


def search(
    query: Annotated[str, typer.Argument(help="What to look for")],
    collection: Annotated[str, typer.Option("--collection", "-c", envvar="APPLIANCE_COLLECTION")],
    k: Annotated[int, typer.Option(min=1, max=100, help="Number of results")] = 10,
    json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
    mode: Annotated[Mode, typer.Option(help="hybrid | vector | bm25")] = Mode.hybrid,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="only documents with tag key=value")] = None,
    content_type: Annotated[list[str] | None, typer.Option("--content-type", help="only these kinds (pdf, md, ...)")
                            ] = None,
    modified_after: Annotated[str | None, typer.Option(help="only documents modified at or after (ISO 8601)")] = None,
    data_dir: DataDir = None,
    model: Model = None,
    embedder: Embedder = None,
) -> None:
    """Search a collection and print the best chunks (within the filters given)."""
    try:
        filters = SearchFilters.of(_tags(tag), modified_after, content_type)
    except FilterError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    try:
        service = open_service(data_dir, model, embedder, 256)
        try:
            hits = service.search(query, [collection], k=k, mode=mode.value, filters=filters)
        finally:
            service.close()
    except ApplianceError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    if json:
        rows = [
            {
                "chunk_id": h.chunk.chunk_id,
                "doc_id": h.chunk.doc_id,
                "title": h.chunk.title,
                "source": h.chunk.source,
                "page": h.chunk.page,
                "heading_path": list(h.chunk.heading_path),
                "text": h.chunk.text,
                "score": h.score,
                "modified": h.chunk.modified,
                "content_type": h.chunk.content_type,
                "tags": dict(h.chunk.tags),
            }
            for h in hits
        ]
        print(jsonlib.dumps({"hits": rows}, ensure_ascii=False, indent=2))
        return
    table = Table("#", "score", "title / section", "page", "text")
    for n, hit in enumerate(hits, 1):
        where = " > ".join((hit.chunk.title, *hit.chunk.heading_path[1:]))
        snippet = " ".join(hit.chunk.text.split())[:160]
        table.add_row(str(n), f"{hit.score:.3f}", where, str(hit.chunk.page or ""), snippet)
    console.print(table)
