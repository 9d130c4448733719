"""The `appliance` command. Every option can also be set as an environment variable APPLIANCE_<NAME>."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from appliance.bench.answers_report import bench_answers
from appliance.bench.api_load import bench_api
from appliance.bench.blend import bench_blend
from appliance.bench.cluster_report import bench_cluster
from appliance.bench.conversation import bench_conversation
from appliance.bench.engine import bench_engine
from appliance.bench.first_question import bench_first_question
from appliance.bench.followups import bench_followups
from appliance.bench.gold_sets import bench_gold_set
from appliance.bench.itl import bench_itl
from appliance.bench.ocr import bench_ocr
from appliance.bench.rag import bench_rag
from appliance.bench.structured import bench_structured
from appliance.commands.ask import ask
from appliance.commands.demo import demo
from appliance.commands.eval import eval_command
from appliance.commands.keys import keys_app
from appliance.commands.retrieval import ingest, search
from appliance.commands.sync import sync
from appliance.commands.warm import warm
from appliance.config import Settings
from appliance.errors import ApplianceError
from appliance.keys import KeyStore

if TYPE_CHECKING:
    from appliance.cluster.app import ClusterPlan
    from appliance.engine.front import EngineFront

app = typer.Typer(help="RAG appliance: ingest documents, search them, and answer questions with citations.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
bench_app = typer.Typer(help="Measure the appliance against its peers (figures go to docs/BENCHMARKS.md).",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(keys_app, name="keys")
app.command("ingest")(ingest)
app.command("search")(search)
app.command("warm")(warm)
app.command("ask")(ask)
app.command("demo")(demo)
app.command("eval")(eval_command)
app.command("sync")(sync)
bench_app.command("engine")(bench_engine)
bench_app.command("rag")(bench_rag)
bench_app.command("blend")(bench_blend)
bench_app.command("first-question")(bench_first_question)
bench_app.command("followups")(bench_followups)
bench_app.command("conversation")(bench_conversation)
bench_app.command("gold-set")(bench_gold_set)
bench_app.command("itl")(bench_itl)
bench_app.command("api")(bench_api)
bench_app.command("structured")(bench_structured)
bench_app.command("ocr")(bench_ocr)
bench_app.command("answers")(bench_answers)
bench_app.command("cluster")(bench_cluster)
err = Console(stderr=True)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code=1)


def _has_stored_keys(settings: Settings) -> bool:
    path = settings.data_dir / "keys.db"
    return path.is_file() and KeyStore(path).has_keys()


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind [default: 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: 8000]")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Store, indexes and model cache [default: ./data]")] = None,
    model: Annotated[str | None, typer.Option(help="'default', a .gguf file or a Hugging Face folder")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto | float32 | bfloat16")] = None,
    log_level: Annotated[str, typer.Option(help="debug | info | warning")] = "info",
    replicas: Annotated[int | None, typer.Option(min=1, help="Engine replicas on Ray Serve (the `cluster` extra); "
                                                 "without it, one engine in its own process")] = None,
    router: Annotated[str, typer.Option(help="With --replicas: affinity | round-robin | pow2")] = "affinity",
    ray_address: Annotated[str | None, typer.Option(help="With --replicas: join this Ray cluster (e.g. "
                                                    "'auto') instead of starting one on this machine")] = None,
    min_replicas: Annotated[int | None, typer.Option(min=0, help="With --replicas: autoscale from this many")] = None,
    max_replicas: Annotated[int | None, typer.Option(min=1, help="... up to this many")] = None,
    target_ongoing: Annotated[float, typer.Option(min=0.1, help="... aiming at this many requests per replica")] = 4.0,
    upscale_delay: Annotated[float, typer.Option(min=0, help="... adding a replica once the load has stayed over "
                                                 "the target this many seconds")] = 30.0,
    downscale_delay: Annotated[float, typer.Option(min=0, help="... removing one once it has stayed under it this "
                                                   "many seconds")] = 600.0,
) -> None:
    """Start the HTTP server (OpenAI-compatible API, search, ask, admin and the web UI)."""
    from appliance.server.app import create_app, serve_app
    from appliance.server.logging import configure_logging

    try:
        settings = Settings.with_flags(host=host, port=port, data_dir=data_dir, model=model, device=device, dtype=dtype)
    except ValueError as exc:
        raise fail(str(exc).splitlines()[0]) from None
    if not is_loopback(settings.host) and not settings.admin_key and not _has_stored_keys(settings):
        raise fail(f"refusing to listen on {settings.host} without an API key: set APPLIANCE_ADMIN_KEY or create "
                   "one with 'appliance keys create --role admin' (unauthenticated access is only allowed on loopback)")
    plan = None if replicas is None else _cluster_plan(
        settings, replicas, router, min_replicas=min_replicas, max_replicas=max_replicas,
        target_ongoing_requests=target_ongoing, upscale_delay_s=upscale_delay, downscale_delay_s=downscale_delay)
    configure_logging(log_level)  # only once every flag is accepted: a refusal leaves the caller's logging alone
    if plan is not None:
        _serve_cluster(settings, plan, ray_address)
        return
    try:
        with err.status(f"loading model {settings.model} ..."):
            engine = _start_engine(settings, log_level)
    except ApplianceError as exc:
        raise fail(str(exc)) from None
    serve_app(create_app(settings, engine, engine.info.model_name, freeze=True), settings.host, settings.port,
              log_level)


def _cluster_plan(settings: Settings, replicas: int, router: str, *, min_replicas: int | None,
                  max_replicas: int | None, target_ongoing_requests: float, upscale_delay_s: float,
                  downscale_delay_s: float) -> ClusterPlan:
    """`serve --replicas N`'s flags as a plan for Ray Serve (refused with a clear error before anything starts)."""
    try:
        from appliance.cluster.app import ClusterPlan
        from appliance.cluster.routers import ROUTERS
    except ImportError as exc:
        raise fail(f"--replicas needs Ray Serve: pip install 'rag-appliance[cluster]' ({exc})") from None
    if router not in ROUTERS:
        raise fail(f"unknown router {router!r} (one of {', '.join(ROUTERS)})")
    if (min_replicas is None) != (max_replicas is None):
        raise fail("--min-replicas and --max-replicas go together")
    threads = settings.threads or max(1, (os.cpu_count() or 1) // replicas)
    return ClusterPlan(replicas=replicas, router=router, threads_per_replica=threads, min_replicas=min_replicas,
                       max_replicas=max_replicas, target_ongoing_requests=target_ongoing_requests,
                       upscale_delay_s=upscale_delay_s, downscale_delay_s=downscale_delay_s)


def _serve_cluster(settings: Settings, plan: ClusterPlan, ray_address: str | None) -> None:
    """`serve --replicas N`: the same API on Ray Serve, N engine replicas behind the plan's router."""
    from appliance.cluster.serve import serve_cluster

    try:
        serve_cluster(settings, plan, ray_address)
    except (RuntimeError, ConnectionError, ApplianceError) as exc:
        raise fail(f"the cluster could not start: {str(exc).splitlines()[0]}") from None


def _start_engine(settings: Settings, log_level: str) -> EngineFront:
    """The engine in its own process (APPLIANCE_ENGINE_PROCESS, the default) or on a thread of this one."""
    if settings.engine_process:
        from appliance.engine.process_engine import ProcessEngine

        return ProcessEngine.start(settings.engine_config(), settings.max_queue, log_level, settings.engine_nice)
    from appliance.engine.async_engine import AsyncEngine

    return AsyncEngine.serving(settings.engine_config(), settings.max_queue, settings.engine_nice)


@bench_app.command("retrieval")
def bench_retrieval_command(
    json_file: Annotated[Path | None, typer.Option("--json", help="Also write the raw figures to this file")] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Repeats per figure (the median is reported)")] = 3,
) -> None:
    """Ingestion throughput, hybrid search latency and recall@5 on Debian's python3.11-doc pages."""
    import json

    from appliance.bench.retrieval import run_retrieval_bench, write_retrieval_section

    try:
        result = run_retrieval_bench(repeats=repeats)
    except FileNotFoundError as exc:
        raise fail(str(exc)) from None
    write_retrieval_section(result)
    if json_file is not None:
        json_file.write_text(json.dumps(result, indent=1))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
