"""`appliance bench itl`: do running streams keep their pace while document-cache requests arrive?

Eight streams decode (plain prompts, `off`, `ignore_eos`) in one in-process engine; while they do, RAG
requests over pre-encoded chunks (the gold questions' prompts, as in `bench blend`) arrive one every
`interval` seconds, each answered in `blend` (or, as the reference, in `off`: a full prefill, chunked by the
engine's token budget). Per scenario: the streams' inter-token latency (the time between two tokens of one
stream) p50 and p99, and the arriving requests' TTFT p50. Scenarios run in rounds (none, blend, off, ...), so
the machine's drift spreads over all of them; figures are medians over rounds.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from appliance.bench.machine import describe_machine, machine_markdown

if TYPE_CHECKING:
    from appliance.bench.rag_workload import BenchPrompt
    from appliance.engine.engine import LLMEngine

SCENARIOS = ("none", "blend", "off")  # what arrives while the streams decode
STREAM_PROMPTS = [f"Write a long story about the number {i}, in many short chapters:" for i in range(8)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_scenario(engine: LLMEngine, arriving: str, prompts: list[BenchPrompt], interval_s: float,
                 streams: int) -> dict[str, float]:
    """Start `streams` decoding streams, then let `len(prompts)` requests arrive in mode `arriving` (none: only
    wait as long), one every `interval_s`; stop the streams when the last arrival has finished."""
    from appliance.engine.sampling import SamplingParams

    tok = engine.tokenizer
    engine.block_manager.reset_prefix_cache()  # the arrivals are new in every round (their chunks stay cached)
    stream_ids = [f"stream-{i}" for i in range(streams)]
    for rid, text in zip(stream_ids, STREAM_PROMPTS * (streams // len(STREAM_PROMPTS) + 1), strict=False):
        engine.add_request(rid, tok.encode(text), SamplingParams(max_tokens=100_000, temperature=0.0,
                                                                 ignore_eos=True), doc_cache="off")
    while any(r.num_output_tokens == 0 for r in engine.scheduler.running) or engine.num_waiting:
        engine.step()  # every stream decoding before the clock starts
    last_token: dict[str, float] = {}
    gaps: list[float] = []
    arrivals: dict[str, float] = {}
    ttfts: list[float] = []
    start = time.monotonic()
    pending = list(enumerate(prompts))
    answer = SamplingParams(max_tokens=16, temperature=0.0)
    end = start + len(prompts) * interval_s
    streaming = set(stream_ids)
    while time.monotonic() < end or arrivals:
        now = time.monotonic()
        if pending and now >= start + pending[0][0] * interval_s:
            i, prompt = pending.pop(0)
            if arriving != "none":
                arrivals[f"arrival-{i}"] = now
                engine.add_request(f"arrival-{i}", prompt.token_ids, answer, prompt.layout, arriving)
        for out in engine.step():
            now = time.monotonic()
            if out.request_id in streaming:
                if out.request_id in last_token:
                    gaps.append(now - last_token[out.request_id])
                last_token[out.request_id] = now
            elif out.request_id in arrivals:
                if out.num_output_tokens == 1:
                    ttfts.append(now - arrivals[out.request_id])
                if out.finished:
                    del arrivals[out.request_id]
    for rid in stream_ids:
        engine.abort(rid)
    return {"itl_p50_ms": 1000 * percentile(gaps, 0.5), "itl_p99_ms": 1000 * percentile(gaps, 0.99),
            "gaps": len(gaps), "ttft_p50_ms": 1000 * percentile(ttfts, 0.5) if ttfts else 0.0}


def run_itl_bench(data_dir: Path | None, arrivals: int = 12, interval_s: float = 2.0, rounds: int = 3,
                  streams: int = 8, k: int = 5, say: Callable[[str], None] = lambda _: None,
                  corpus_dir: Path | None = None, questions: tuple[list[str], list[str]] | None = None,
                  max_batched_tokens: int | None = None, decode_step_tokens: int | None = None) -> dict[str, Any]:
    """Prepare the arriving prompts (the first `arrivals` gold questions, chunks encoded on disk), then run every
    scenario `rounds` times, interleaved, in one engine (its step token budget `max_batched_tokens`, and while
    streams decode `decode_step_tokens`, default the engine's); return the medians."""
    from appliance.bench.blend import bench_questions, encoded_prompts
    from appliance.bench.rag import WARM_COLLECTION
    from appliance.config import EngineConfig
    from appliance.engine.engine import LLMEngine

    texts, pages = questions or bench_questions("versions", arrivals)[:2]
    texts, pages = texts[:arrivals], pages[:arrivals]
    with ExitStack() as stack:
        root = data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-itl-")))
        loaded, kv_dir, prompts, _ = encoded_prompts(root, texts, pages, f"{WARM_COLLECTION}-gold-{len(texts)}",
                                                     k, "auto", say, corpus_dir)
        config = EngineConfig(data_dir=kv_dir, kv_cache_mb=2048, doc_cache="blend")
        if max_batched_tokens:
            config = replace(config, max_num_batched_tokens=max_batched_tokens)
        if decode_step_tokens is not None:
            config = replace(config, decode_step_tokens=decode_step_tokens)
        engine = LLMEngine(loaded, config)
        builds = [b.name for b in engine.runner.builds]
        engine.runner.wait_for_builds()  # the streams decode as `serve`'s do
        runs: dict[str, list[dict[str, float]]] = {s: [] for s in SCENARIOS}
        for r in range(rounds):
            for scenario in SCENARIOS:
                figures = run_scenario(engine, scenario, prompts, interval_s, streams)
                say(f"round {r + 1}, {scenario}: {figures}")
                runs[scenario].append(figures)
    rows = {s: {key: statistics.median(f[key] for f in found) for key in found[0]} for s, found in runs.items()}
    return {"machine": describe_machine(), "streams": streams, "arrivals": len(prompts), "interval_s": interval_s,
            "rounds": rounds, "mean_prompt_tokens": statistics.mean(len(p.token_ids) for p in prompts),
            "max_num_batched_tokens": engine.config.max_num_batched_tokens,
            "decode_step_tokens": engine.config.decode_step_tokens, "decode": ", ".join(builds) or "eager",
            "scenarios": rows}


def itl_markdown(result: dict[str, Any]) -> str:
    """The "Inter-token latency under arrivals" section of docs/BENCHMARKS.md."""
    rows = result["scenarios"]
    quiet = rows["none"]["itl_p99_ms"]
    lines = [
        f"Do running streams keep their pace while RAG requests arrive (`appliance bench itl`)? "
        f"{result['streams']} streams decode while {result['arrivals']} gold-question prompts (mean "
        f"{result['mean_prompt_tokens']:.0f} tokens, chunks pre-encoded on disk) arrive one every "
        f"{result['interval_s']:g} s, answered in `blend` or, as the reference, `off` (a full prefill); `none`: "
        f"nothing arrives. A step computes at most {result['max_num_batched_tokens']} tokens "
        f"(`APPLIANCE_MAX_NUM_BATCHED_TOKENS`); {_held(result)} The engine decodes as `serve` does "
        f"({result.get('decode', 'eager')}). Medians of {result['rounds']} interleaved rounds, each meeting the "
        f"arrivals anew (the prefix cache reset; their chunks stay in the chunk tier).",
        "",
        "| arriving | streams' ITL p50 ms | streams' ITL p99 ms | p99 / none's | arrivals' TTFT p50 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        ttft = f"{r['ttft_p50_ms']:.0f}" if name != "none" else "-"
        lines.append(f"| {name} | {r['itl_p50_ms']:.1f} | {r['itl_p99_ms']:.1f} | {r['itl_p99_ms'] / quiet:.2f}x "
                     f"| {ttft} |")
    lines += ["", "Machine:", "", machine_markdown(result["machine"]), "",
              "Reproduce: `appliance bench itl --data-dir DIR` (needs `python3.11-doc`)."]
    return "\n".join(lines)


def _held(result: dict[str, Any]) -> str:
    cap = result.get("decode_step_tokens", 0)
    if not cap:
        return "blend's work is not held while the streams decode (`APPLIANCE_DECODE_STEP_TOKENS=0`)."
    return (f"while the streams decode, blend's work and their tokens take at most {cap} a step together "
            "(`APPLIANCE_DECODE_STEP_TOKENS`; off's prefill is not held).")


def bench_itl(
    json_file: Annotated[Path | None, typer.Option("--json", help="also write the full result here")] = None,
    arrivals: Annotated[int, typer.Option(min=1, help="RAG requests arriving per scenario")] = 12,
    interval: Annotated[float, typer.Option(min=0.1, help="seconds between two arrivals")] = 2.0,
    rounds: Annotated[int, typer.Option(min=1, help="interleaved rounds of every scenario")] = 3,
    streams: Annotated[int, typer.Option(min=1, help="decoding streams")] = 8,
    max_batched_tokens: Annotated[int | None, typer.Option(min=16, help="the engine's token budget per step "
                                                                        "(default: the engine's)")] = None,
    decode_step_tokens: Annotated[int | None, typer.Option(min=0, help="while streams decode, their tokens and "
                                                           "blend's work a step (0: not held; default: the "
                                                           "engine's)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="keep (and reuse) the ingested pages and model here")
                        ] = None,
    docs: Annotated[bool, typer.Option("--docs/--no-docs", help="update docs/BENCHMARKS.md")] = True,
) -> None:
    """Inter-token latency of decoding streams while blend (or off) requests arrive."""
    from rich.console import Console

    from appliance.bench.report import publish

    console = Console()
    result = run_itl_bench(data_dir, arrivals, interval, rounds, streams,
                           say=lambda msg: console.print(f"[dim]{msg}[/dim]"), max_batched_tokens=max_batched_tokens,
                           decode_step_tokens=decode_step_tokens)
    publish(console, result, itl_markdown(result), "Inter-token latency under arrivals", json_file, docs)
