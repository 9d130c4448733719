"""`appliance warm` (and `appliance ingest --warm`): pre-encode the chunk KV of a collection.

Every chunk is encoded once after the RAG system prefix, exactly as the engine would for a question, and
written to the disk tier under the data dir; a server on the same data dir (now or later) finds the files
on its next lookup, so even a question nobody asked before finds all its passages already encoded.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from appliance.commands.errors import err, exit_on_appliance_error
from appliance.config import Settings
from appliance.engine.doc_cache.capacity import WarmPlan
from appliance.errors import ApplianceError
from appliance.priority import BACKGROUND_NICE, lower_priority
from retrieval.service import RetrievalService
from retrieval.types import Chunk

if TYPE_CHECKING:
    from appliance.engine.engine import LLMEngine

console = Console()


def passages_by_demand(service: RetrievalService, collection: str) -> list[Chunk]:
    """The collection's chunks, the most retrieved first (`RetrievalService.retrieval_counts`), then in
    collection order (documents as listed, chunks in reading order)."""
    chunks = [c for doc in service.list_documents(collection) for c in service.document_chunks(doc.doc_id)]
    counts = service.retrieval_counts([c.chunk_id for c in chunks])
    return sorted(chunks, key=lambda c: -counts.get(c.chunk_id, 0))  # stable: ties keep collection order


def queue_collection(engine: LLMEngine, service: RetrievalService, collection: str) -> WarmPlan:
    """Queue encode jobs for the passages of `collection` not cached yet, exactly as prompts hold them (after
    the RAG system prefix), as many as the disk tier has room for (`LLMEngine.warm_plan`), the most retrieved
    first (`passages_by_demand`)."""
    from appliance.rag.prompt import PromptBuilder

    builder = PromptBuilder(engine.tokenizer)
    passages = [(list(builder.passage_tokens(c)), c.doc_id) for c in passages_by_demand(service, collection)]
    prefix = list(builder.prefix)
    plan = engine.warm_plan(prefix, [tokens for tokens, _ in passages])
    engine.warm(prefix, [passages[i] for i in plan.chosen])
    return plan


def _gb(n: int) -> str:
    return f"{n / 2**30:.1f} GB"


def describe_plan(plan: WarmPlan, kv_format: str = "int8") -> str:
    """What the warm will write against the disk budget (files in `kv_format`), said before it starts."""
    head = (f"{plan.passages} passages, {plan.tokens:,} tokens at {plan.bytes_per_token / 1024:.1f} KB of KV each; "
            f"{plan.cached} already cached; the rest need {_gb(plan.need_bytes)}, the disk budget has "
            f"{_gb(plan.room_bytes)} left")
    if plan.fits:
        return head
    room = "APPLIANCE_DOC_CACHE_DISK_MB" + (
        "" if kv_format == "int8" else ", or APPLIANCE_DOC_CACHE_KV_FORMAT=int8 (about half of bf16's bytes)")
    return (f"{head}: encoding the {len(plan.chosen)} uncached passages that fit, the most retrieved first; the "
            f"other {plan.left_out} are encoded when a question needs them. For room: {room}.")


def warm_collection(settings: Settings, service: RetrievalService, collection: str) -> tuple[WarmPlan, float]:
    """Encode the collection's chunks that are not cached yet and fit; returns the plan carried out, seconds."""
    from appliance.engine.engine import LLMEngine

    engine = LLMEngine.from_config(settings.one_shot_engine_config())
    if engine.doc_cache.disk is None:
        raise ApplianceError("the disk tier is off (APPLIANCE_DOC_CACHE_DISK_MB=0): nothing to warm into")
    started = time.perf_counter()
    plan = queue_collection(engine, service, collection)
    warning = "" if plan.fits else "[bold yellow]warning:[/] "
    (console if plan.fits else err).print(warning + describe_plan(plan, settings.doc_cache_kv_format))
    columns = (TextColumn("[bold]encoding chunk KV"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("warm", total=len(plan.chosen))
        while engine.has_unfinished():
            engine.step()
            progress.update(task, completed=engine.doc_cache.stats.encoded_chunks)
    return plan, time.perf_counter() - started


def report_warm(collection: str, result: tuple[WarmPlan, float], settings: Settings) -> None:
    plan, seconds = result
    left_out = f", {plan.left_out} left out for room" if plan.left_out else ""
    console.print(f"[bold]{collection}:[/] {plan.passages} chunks, {len(plan.chosen)} encoded now ({plan.cached} "
                  f"were cached{left_out}) in {seconds:.1f} s → {settings.data_dir / 'kvcache'}")


def warm(
    collection: Annotated[str, typer.Option("--collection", "-c", envvar="APPLIANCE_COLLECTION")],
    data_dir: Annotated[Path | None, typer.Option(envvar="APPLIANCE_DATA_DIR", help="Data dir [default: ./data]")]
    = None,
    model: Annotated[str | None, typer.Option(envvar="APPLIANCE_MODEL", help="LLM [default: the embedded one]")]
    = None,
) -> None:
    """Pre-encode the chunk KV of an existing collection into the document cache's disk tier."""
    from appliance.commands.service import open_service

    settings = Settings.with_flags(data_dir=data_dir, model=model)
    lower_priority(BACKGROUND_NICE, whole_process=True)  # a serving engine's answers come first
    with exit_on_appliance_error():
        service = open_service(data_dir, model, None, 256)
        try:
            if collection not in {c.name for c in service.list_collections()}:
                raise ApplianceError(f"no collection named {collection!r}")
            report_warm(collection, warm_collection(settings, service, collection), settings)
        finally:
            service.close()
