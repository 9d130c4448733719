"""`appliance sync DIR --collection NAME [--watch]`: keep a collection equal to a folder (retrieval/sync.py).

Without --watch: one pass (progress bar while files are ingested), a summary, exit 1 when a file failed.
With --watch: a pass, then another after each burst of changes, a summary line each; Ctrl-C stops it (exit 0
when idle; a pass cut short leaves nothing half-done and the next run resumes it).
"""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from appliance.commands.retrieval import ChunkTokens, DataDir, Embedder, Model
from appliance.commands.service import open_service
from appliance.errors import ApplianceError
from appliance.priority import BACKGROUND_NICE, lower_priority
from retrieval.sync import FolderSync, SyncReport, watch

console = Console()
err = Console(stderr=True)


def print_report(report: SyncReport, verbose: bool = True) -> None:
    counts = report.counts()
    failed = counts["failed"]
    console.print(
        f"[bold]{report.collection}[/] ⇐ {report.folder}: {counts['added']} added, {counts['changed']} changed, "
        f"{counts['removed']} removed, {counts['renamed']} renamed, {counts['unchanged']} unchanged, "
        f"[{'red' if failed else 'green'}]{failed} failed[/], {counts['unsupported']} unsupported"
        + (f" — job {report.job_id}" if report.job_id else " — nothing to ingest"),
        highlight=False,
    )
    if not verbose:
        return
    lines = [("renamed", f"{r.old_source} → {r.new_source}") for r in report.plan.rename]
    lines += [("removed", d.source) for d in report.plan.remove]
    lines += [("failed", f"{source}: {error}") for source, error in report.failed.items()]
    lines += [("failed", f"{source}: failed before with this content") for source in report.plan.failed_before]
    lines += [("duplicate", f"{source}: same content as {same}") for source, same in report.plan.duplicates.items()]
    lines += [("unsupported", source) for source in report.scan.unsupported]
    lines += [("unreadable", f"{source}: {why}") for source, why in report.scan.unreadable.items()]
    for label, text in lines:
        console.print(f"  [dim]{label}[/] {text}", highlight=False)


def _one_pass(syncer: FolderSync, collection: str, folder: Path) -> SyncReport:
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[current]}", style="dim"))
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("syncing", total=None, current="")
        return syncer.run(collection, folder, progress=lambda e: progress.update(
            task, completed=e.done, total=e.total, current=e.source[-60:]))


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM (docker stop, kill) stops a watch as Ctrl-C does


def sync(
    folder: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="The folder to mirror")],
    collection: Annotated[
        str, typer.Option("--collection", "-c", envvar="APPLIANCE_COLLECTION", help="Collection (created if missing)")
    ],
    watch_folder: Annotated[bool, typer.Option("--watch", help="Keep syncing as the folder changes (Ctrl-C stops)")]
    = False,
    debounce_ms: Annotated[int, typer.Option(envvar="APPLIANCE_SYNC_DEBOUNCE_MS", min=50,
                                             help="--watch: quiet time before a pass")] = 500,
    data_dir: DataDir = None,
    model: Model = None,
    embedder: Embedder = None,
    chunk_tokens: ChunkTokens = 256,
) -> None:
    """Keep a collection equal to a folder: ingest new files, re-ingest changed ones (by content hash), record
    renames, remove documents whose file is gone (or that came from elsewhere)."""
    lower_priority(BACKGROUND_NICE, whole_process=True)  # a serving engine's answers come first
    try:
        service = open_service(data_dir, model, embedder, chunk_tokens)
    except ApplianceError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    try:
        syncer = FolderSync(service)
        if not watch_folder:
            report = _one_pass(syncer, collection, folder)
            print_report(report)
            if report.counts()["failed"]:
                raise typer.Exit(1)
            return
        signal.signal(signal.SIGTERM, _interrupt)
        console.print(f"watching {folder.resolve()} (Ctrl-C stops)", highlight=False)
        watch(syncer, collection, folder, on_pass=lambda r: print_report(r, verbose=False),
              on_error=lambda exc: err.print(f"[bold red]sync failed:[/] {exc}"), debounce_ms=debounce_ms)
    except KeyboardInterrupt:
        console.print("stopped")
    except ApplianceError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    finally:
        service.close()
