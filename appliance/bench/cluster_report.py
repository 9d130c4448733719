"""`appliance bench cluster`'s command and its section of docs/SCALING.md ("Measured: affinity against round-robin
and power-of-two"); the measurement itself is `cluster.py`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from appliance.bench.cluster import ROUTER_ORDER, run_cluster_bench

SECTION = "Measured: affinity against round-robin and power-of-two"
SCALING_FILE = Path("docs") / "SCALING.md"


def _bar(target: dict[str, Any]) -> str:
    if target["label"].startswith("busiest"):
        return f"<= {target['bar']:.0%}"
    return f">= {target['bar']}x" if target["higher"] else f"<= {target['bar']}x ({1 - target['bar']:.0%} lower)"


def _reached(target: dict[str, Any]) -> str:
    value = target["reached"]
    if value is None:
        return "- (round-robin had no hit)"
    return f"{value:.0%}" if target["label"].startswith("busiest") else f"{value:.2f}x"


def cluster_markdown(result: dict[str, Any]) -> str:
    """The section body: the method and sizes, one row per router (medians over repeats), the targets."""
    m, c, s, w = result["machine"], result["corpus"], result["sizes"], result["workload"]
    order = ", ".join(result["routers"])
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, torch {m['torch']}. Load average at the start: "
        f"{m['load_average']}.",
        "",
        f"`appliance bench cluster`: {w['replicas']} engine replicas on Ray Serve (one intra-op thread each, model "
        f"`{w['model']}`) behind each router, asked through the HTTP API as a user would (`POST /api/ask`, streamed, "
        f"k={w['k']}, greedy, <= {w['max_tokens']} tokens), {w['concurrency']} requests in flight. Corpus: "
        f"{c['documents']} pages, {c['chunks']} chunks. Mix: {w['warm']} requests that fill the caches (as on a server "
        f"that has run a while; not measured), then {w['requests']} measured ones, over the {w['topics']} topics "
        f"of the bench's questions (the questions of one page), Zipf({w['zipf']}) popularity, each in one of 5 "
        "phrasings; every router gets the same requests in the same order. TTFT: from sending the request to its "
        "first token event (retrieval included).",
        "",
        f"Sizes, per replica: KV budget {s['kv_cache_mb']} MB ({s['dtype']}, {s['kv_bytes_per_token'] / 1024:.1f} KB "
        f"per token): a chunk tier of {s['chunk_tier_mb']} MB, {w['tier_share']:.0%} of the mix's working set "
        f"({s['distinct_passages']} distinct passages, {s['working_set_tokens']} tokens, {s['working_set_mb']} MB), "
        f"and a paged pool of {s['pool_mb']} MB (prompts: mean {s['prompt_tokens_mean']} tokens, longest "
        f"{s['longest_prompt_tokens']}). Document cache `blend`; the disk tier is off "
        "(`APPLIANCE_DOC_CACHE_DISK_MB=0`): the replicas of one host share it, so a replica would load from it what "
        "the other encoded and the routing's effect on what each replica holds would be hidden (with it on, "
        "affinity's gain is the memory hits measured here over disk loads).",
        "",
        f"A fresh cluster per run; {w['repeats']} repeat(s), each running the routers in turn ({order}), so that "
        "this VM's drift over a run (20-30%) reaches every router alike; figures are medians over the repeats. Hit "
        "rate: the chunk tier's hits over its lookups on both replicas (`GET /api/admin/cluster`'s counters before "
        "and after the measured requests). Busiest replica: its share of the measured requests.",
        "",
        "| router | document-cache hit rate | TTFT p50 ms | TTFT p95 ms | requests/s | busiest replica |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["routers"].items():
        lines.append(f"| {name} | {r['hit_rate']:.0%} | {r['ttft_p50_ms']:.0f} | {r['ttft_p95_ms']:.0f} | "
                     f"{r['requests_per_s']:.2f} | {r['busiest_share']:.0%} |")
    runs = "; ".join(f"{run['router']} #{run['repeat'] + 1}: {run['hit_rate']:.0%}, {run['ttft_p50_ms']:.0f} ms"
                     for run in result["runs"])
    lines += ["", f"Each run (hit rate, TTFT p50), in the order they ran: {runs}."]
    if "targets" in result:
        lines += ["", "| target | wanted | reached | met |", "|---|---:|---:|:---:|"]
        lines += [f"| {t['label']} | {_bar(t)} | {_reached(t)} | {'met' if t['met'] else 'not met'} |"
                  for t in result["targets"]]
    lines += ["", "Reproduce: `appliance bench cluster --data-dir DIR` (the `cluster` extra and `python3.11-doc`; "
              "`--data-dir` keeps the ingested corpus for the next run, `--json FILE` every run's figures)."]
    return "\n".join(lines)


def bench_cluster(
    requests: Annotated[int, typer.Option(min=2, help="measured requests (each router gets the same)")] = 80,
    warm: Annotated[int, typer.Option(min=0, help="requests before them that fill the caches, not measured")] = 80,
    concurrency: Annotated[int, typer.Option(min=1, help="requests in flight at once")] = 2,
    repeats: Annotated[int, typer.Option(min=1, help="runs per router, interleaved in time")] = 2,
    routers: Annotated[str, typer.Option(help="routers to compare, comma-separated")] = ",".join(ROUTER_ORDER),
    max_tokens: Annotated[int, typer.Option(min=1, help="tokens generated per answer at most")] = 16,
    data_dir: Annotated[Path | None, typer.Option(help="keep (and reuse) the ingested corpus and model here")
                        ] = None,
    json_file: Annotated[Path | None, typer.Option("--json", help="also write every run's figures here")] = None,
    docs: Annotated[bool, typer.Option("--docs/--no-docs", help="update docs/SCALING.md")] = True,
) -> None:
    """Document-affinity routing against round-robin and power-of-two on 2 engine replicas (Ray Serve)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from appliance.bench.report import update_section
    from appliance.errors import ApplianceError

    chosen = [r.strip() for r in routers.split(",") if r.strip()]
    if not chosen or not set(chosen) <= set(ROUTER_ORDER):
        raise typer.BadParameter(f"a comma-separated choice of {', '.join(ROUTER_ORDER)}", param_hint="--routers")
    console = Console()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        tasks: dict[str, TaskID] = {}

        def step(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = progress.add_task(label, total=total)
            progress.update(tasks[label], completed=done)

        try:
            result = run_cluster_bench(data_dir, requests, concurrency, repeats, chosen, max_tokens, step=step,
                                       say=lambda msg: progress.console.print(msg, style="dim", markup=False),
                                       warm=warm)
        except (ApplianceError, FileNotFoundError, RuntimeError) as exc:
            console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(1) from exc
    markdown = cluster_markdown(result)
    console.print(markdown, markup=False, highlight=False, soft_wrap=True)
    if json_file is not None:
        json_file.write_text(json.dumps(result, indent=2))
    if docs:
        update_section(SCALING_FILE, SECTION, markdown, result["machine"])
        console.print(f"wrote {SCALING_FILE} (section {SECTION})")
