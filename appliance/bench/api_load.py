"""`appliance bench api`: does the HTTP API cost the engine anything, does it answer while the engine works, and
how does it compare with llama.cpp's own server?

Systems, interleaved in rounds (the order rotating, so the machine's drift spreads over all of them):
`engine process` (`appliance serve` as shipped: the engine steps in its own process), `engine thread` (the
same server with APPLIANCE_ENGINE_PROCESS=false: the step loop on a thread of the server process, sharing its
GIL), `in-process` (the same engine configuration stepped directly by this process, no HTTP: the reference) and
`llama-server` (llama.cpp's C++ OpenAI server on the same GGUF, 16 slots, 2 threads; when built: `make
bench-extra`). Ours decode as `serve` does (compiled decode and the fused layer), their background builds waited
for before a server is measured.

Phases of each run, all greedy with `ignore_eos`: one stream; 16 streams at once; then, for ours, "full load"
(`api_probes.py`): 16 streams decoding while a ~2k-token prompt arrives, with `/health` probed every 50 ms and,
the queue being full (APPLIANCE_MAX_QUEUE=17), one more request every 100 ms that the server refuses (503),
from a process of their own, as a load balancer's health checks would. A stream's decode rate
is (its tokens - 1) / (its last token's time - its first's), the aggregate the sum over streams; inter-token
latency is the gap between two SSE chunks of one stream. Figures: medians over rounds, but the full load's
percentiles, which are over every round's probes together.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer

from appliance.bench.api_probes import LOAD_PHASES, full_load, pooled_load_figures
from appliance.bench.itl import percentile
from appliance.bench.llama_server import ENV_VAR, find_llama_server, llama_serving
from appliance.bench.machine import describe_machine
from appliance.bench.served import serving
from appliance.bench.sse_client import stream_completion

if TYPE_CHECKING:
    from appliance.engine.engine import LLMEngine
    from appliance.engine.tokenizer import TextTokenizer

SERVERS = {"engine process": "true", "engine thread": "false"}  # APPLIANCE_ENGINE_PROCESS
REFERENCE = "in-process"
PEER = "llama-server"
QUEUE = 17  # 16 streams + the long prompt: every further request is refused
ENV = {"APPLIANCE_MAX_QUEUE": str(QUEUE), "APPLIANCE_WARMUP_TOKENS": "0", "APPLIANCE_RATE_LIMIT_PER_MINUTE": "0",
       "APPLIANCE_KV_CACHE_MB": "1024"}
PEER_CONTEXT = 512  # tokens per llama-server slot: a prompt and `decode_tokens` fit
TOPICS = ("the sea", "a mountain", "a city at night", "an old library", "the desert", "a river", "winter",
          "a forest", "a lighthouse", "the moon", "a train journey", "a market", "a storm", "a garden", "a bridge",
          "an island")


def stream_figures(times: list[list[float]], tokens: list[int]) -> dict[str, float]:
    """Aggregate decode rate (tok/s) and inter-token latency p50/p99 (ms) from each stream's chunk times."""
    rates = [(n - 1) / (t[-1] - t[0]) for t, n in zip(times, tokens, strict=True) if len(t) > 1 and t[-1] > t[0]]
    gaps = [(b - a) * 1000 for t in times for a, b in zip(t, t[1:], strict=False)]
    return {"tok_s": sum(rates), "itl_p50_ms": percentile(gaps, 0.5), "itl_p99_ms": percentile(gaps, 0.99)}


def _prompt(topic: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Write a long story about {topic}."}]


async def _stream(url: str, topic: str, max_tokens: int, started: asyncio.Semaphore | None = None
                  ) -> tuple[list[float], int]:
    """One streamed chat answer: the arrival time of each chunk with text, and the tokens generated. `started`
    is released at the first chunk."""
    body = {"messages": _prompt(topic), "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    return await stream_completion(url, "/v1/chat/completions", body, started)


async def _server_phases(url: str, long_prompt: str | None, decode_tokens: int) -> dict[str, Any]:
    """One stream, 16 streams, and (given the long prompt) the full-load phase."""
    await _stream(url, "warming up", 8)
    one = await _stream(url, TOPICS[0], decode_tokens)
    many = await asyncio.gather(*(_stream(url, t, decode_tokens) for t in TOPICS))
    phases = {"1": stream_figures([one[0]], [one[1]]),
              "16": stream_figures([t for t, _ in many], [n for _, n in many])}
    if long_prompt is not None:  # the long prompt goes through httpx (one request, not streamed)
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
            phases["load"] = await full_load(client, long_prompt, _stream, TOPICS)
    return phases


def in_process_phases(engine: LLMEngine, decode_tokens: int) -> dict[str, Any]:
    """The reference: the same prompts stepped directly by `engine` (an LLMEngine), times of outputs with text."""
    from appliance.engine.sampling import SamplingParams
    from appliance.engine.tokenizer import ChatMessage

    params = SamplingParams(max_tokens=decode_tokens, temperature=0.0, ignore_eos=True)

    def run(topics: tuple[str, ...]) -> dict[str, float]:
        times: dict[str, list[float]] = {}
        tokens: dict[str, int] = {}
        for i, topic in enumerate(topics):
            message = _prompt(topic)[0]
            prompt = engine.tokenizer.apply_chat_template([ChatMessage(message["role"], message["content"])])
            engine.add_request(f"ref-{time.monotonic_ns()}-{i}", prompt, params)
        while engine.has_unfinished():
            for out in engine.step():
                if out.text:
                    times.setdefault(out.request_id, []).append(time.perf_counter())
                tokens[out.request_id] = out.num_output_tokens
        return stream_figures([times[r] for r in tokens], [tokens[r] for r in tokens])

    run(("warming up",))
    return {"1": run(TOPICS[:1]), "16": run(TOPICS)}


def long_prompt_text(tokenizer: TextTokenizer, tokens: int = 2000) -> str:
    """English text of about `tokens` tokens (the engine bench's text)."""
    from appliance.bench.engine import english_text

    text = english_text()
    ids = tokenizer.encode(text)
    while len(ids) < tokens:
        text += " " + text
        ids = tokenizer.encode(text)
    return tokenizer.decode(ids[:tokens])


def run_api_bench(repeats: int, decode_tokens: int, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Every system `repeats` times, interleaved; the raw runs and their medians."""
    from appliance.config import Settings
    from appliance.engine.engine import LLMEngine
    from appliance.engine.loader import resolve_model_path
    from appliance.openmp import release_openmp_workers

    settings = Settings(max_queue=QUEUE, kv_cache_mb=int(ENV["APPLIANCE_KV_CACHE_MB"]))
    engine = LLMEngine.from_config(settings.engine_config())
    runner = engine.runner
    builds = tuple(b.name for b in runner.builds)  # what the servers build too
    runner.wait_for_builds()  # into the data dir's cache, where the servers find them
    long_prompt = long_prompt_text(engine.tokenizer)
    release_openmp_workers()  # idle while the servers run
    peer = find_llama_server()
    if peer is None:
        say("llama-server not found (`make bench-extra` builds it): its rows are left out")
    systems = [REFERENCE, *SERVERS, *([PEER] if peer else [])]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in systems}
    for repeat in range(repeats):
        for name in systems[repeat % len(systems):] + systems[:repeat % len(systems)]:
            if name == REFERENCE:
                run = in_process_phases(engine, decode_tokens)
                release_openmp_workers()
            elif name == PEER and peer is not None:
                with llama_serving(peer, resolve_model_path(settings.model), len(TOPICS), PEER_CONTEXT) as url:
                    run = asyncio.run(_server_phases(url, None, decode_tokens))
            else:
                with serving({**ENV, "APPLIANCE_ENGINE_PROCESS": SERVERS[name]}, builds) as server:
                    run = asyncio.run(_server_phases(server.url, long_prompt, decode_tokens))
            runs[name].append(run)
            say(f"repeat {repeat + 1}/{repeats} {name}: 1 stream {run['1']['tok_s']:.1f} tok/s, 16 streams "
                f"{run['16']['tok_s']:.1f} tok/s" + (f", /health p99 {run['load']['health_p99_ms']:.1f} ms, refusal "
                                                     f"p99 {run['load']['refusal_p99_ms']:.1f} ms" if "load" in run
                                                     else ""))
    return {"machine": describe_machine(), "repeats": repeats, "decode_tokens": decode_tokens, "runs": runs,
            "decode": ", ".join(builds) or "eager", "engine_nice": settings.engine_nice,
            "summary": {name: _medians(r) for name, r in runs.items()}}


def _medians(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each phase's figures, the median over rounds; the full load's pooled over rounds."""
    return {phase: pooled_load_figures([r[phase] for r in runs]) if phase == "load"
            else {key: statistics.median(r[phase][key] for r in runs) for key in runs[0][phase]}
            for phase in runs[0]}


def api_markdown(result: dict[str, Any]) -> str:
    """The "HTTP API under load" section of docs/BENCHMARKS.md."""
    m, s = result["machine"], result["summary"]
    ref = s[REFERENCE]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, torch {m['torch']}; load average at the start "
        f"{m['load_average']}. `appliance bench api --repeats {result['repeats']}`: the embedded model, greedy, "
        f"`ignore_eos`, {result['decode_tokens']} tokens a stream, systems interleaved, medians of "
        f"{result['repeats']} rounds; ours decode as `serve` does ({result['decode']}). The client (asyncio, "
        "no HTTP library: `appliance/bench/sse_client.py`) runs on the same machine.",
        "",
        "| system | 1 stream tok/s | ITL p50 / p99 ms | 16 streams tok/s | ITL p50 / p99 ms | API / in-process "
        "(16) | `/health` p50 / p99 ms under load | refusal p50 / p99 ms | ~2k prompt s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, fig in s.items():
        one, many, load = fig["1"], fig["16"], fig.get("load")
        ratio = "-" if name == PEER else f"{many['tok_s'] / ref['16']['tok_s']:.2f}x"
        probes = (f"{load['health_p50_ms']:.1f} / {load['health_p99_ms']:.1f} | {load['refusal_p50_ms']:.1f} / "
                  f"{load['refusal_p99_ms']:.1f} | {load['long_prompt_s']:.1f}") if load else "- | - | -"
        lines.append(f"| {name} | {one['tok_s']:.1f} | {one['itl_p50_ms']:.0f} / {one['itl_p99_ms']:.0f} | "
                     f"{many['tok_s']:.1f} | {many['itl_p50_ms']:.0f} / {many['itl_p99_ms']:.0f} | {ratio} | "
                     f"{probes} |")
    probed = next((fig["load"] for fig in s.values() if "load" in fig), None)
    pooled = (f" ({probed['probes']:.0f} `/health` probes and {probed['refusals']:.0f} refusals a system)"
              if probed else "")
    lines += ["", "Under load: 16 streams decoding while a ~2k-token prompt is prefilled; `/health` probed every "
                  "50 ms and a refused request (queue full, 503) every 100 ms, halfway between two, until the "
                  "prompt is answered, from a process of their own speaking HTTP/1.1 on one kept-alive socket (as "
                  f"a load balancer's check does); {LOAD_PHASES} such phases a round, each with a prompt of its "
                  f"own; the percentiles are over every round's probes together{pooled}. The servers' engines "
                  f"run at nice {result['engine_nice']} (`APPLIANCE_ENGINE_NICE`, `appliance/priority.py`). "
                  "Targets (issue 18): `/health` p99 and refusal p99 <= 5 ms; 16 streams through the API >= 0.95x "
                  "in-process."]
    if PEER in s:
        ours, peer = s["engine process"], s[PEER]
        lines += ["", f"`appliance serve` against `llama-server` ({len(TOPICS)} slots), both through their OpenAI "
                      "chat API with the same client:", "",
                  "| ratio | measured | target (issue 18) |", "| --- | ---: | ---: |",
                  f"| 1 stream, ours / llama-server | {ours['1']['tok_s'] / peer['1']['tok_s']:.2f}x | >= 1.5x |",
                  f"| 16 streams, ours / llama-server's 16 slots | {ours['16']['tok_s'] / peer['16']['tok_s']:.2f}x "
                  "| >= 3x |",
                  f"| 16 streams, ours / llama-server's single stream | "
                  f"{ours['16']['tok_s'] / peer['1']['tok_s']:.2f}x | >= 5x |"]
    lines += ["", "Reproduce: `appliance bench api` (`--json FILE` keeps every round); the llama-server rows need "
                  "`make bench-extra`, which builds llama.cpp's server from the llama-cpp-python sdist's source "
                  f"(or `{ENV_VAR}` naming a llama-server binary)."]
    return "\n".join(lines)


def bench_api(
    repeats: Annotated[int, typer.Option(min=1, help="rounds (every system once a round)")] = 3,
    decode_tokens: Annotated[int, typer.Option(min=8, help="tokens a stream generates")] = 96,
    json_file: Annotated[Path | None, typer.Option("--json", help="also write the full result here")] = None,
    docs: Annotated[bool, typer.Option("--docs/--no-docs", help="update docs/BENCHMARKS.md")] = True,
) -> None:
    """The HTTP API against the engine stepped in-process and against llama.cpp's llama-server: decode at 1 and
    16 streams, /health and refusals under full load, with the engine in its own process and on a thread."""
    from rich.console import Console

    from appliance.bench.report import publish

    console = Console()
    result = run_api_bench(repeats, decode_tokens, say=lambda msg: console.print(f"[dim]{msg}[/dim]"))
    publish(console, result, api_markdown(result), "HTTP API under load", json_file, docs)
