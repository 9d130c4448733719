"""`appliance bench engine`: our engine side by side with transformers (eager) and llama.cpp.

One run measures every system on the same machine, the same GGUF file and the same token ids:

- prefill tokens/s for prompts of each length in `prefill_lengths` (prompt + 1 sampled token,
  a distinct prompt per repeat so no prefix cache can help; our prefix caching is off);
- decode tokens/s at each concurrency in `concurrency` (1 = single stream): all requests start
  together, and the rate counts the tokens produced after every request has its first token,
  divided by the time from that moment to the last token (prefill excluded, EOS ignored, greedy);
- peak memory: each system runs in its own subprocess (`python -m appliance.bench.engine
  --system NAME ...`) and reports its `ru_maxrss`, so peaks never mix.

Figures are medians of `repeats`. llama-cpp-python has no batched decode in its Python API, so its
single-stream rate is the comparison point for our concurrent rates (as issue 2 says).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Protocol

import typer

from appliance.bench.engine_results import (
    BUSY_CORES,
    COMPILED_SUFFIX,
    EAGER_SUFFIX,
    OURS_PREFIX,
    PEERS,
    compute_ratios,
)

SYSTEM_TIMEOUT_S = 1200
_TEXT_MODULES = ("argparse", "asyncio", "collections", "contextlib", "dataclasses", "functools",
                 "itertools", "json", "logging", "pathlib", "re", "subprocess", "threading", "textwrap",
                 "unittest", "zipfile")


@dataclass
class Workload:
    """The token ids every system gets; `prefill[str(L)]` holds repeats + 1 distinct prompts (0 = warmup)."""

    prefill: dict[str, list[list[int]]]
    decode_prompts: list[list[int]]
    decode_tokens: int
    concurrency: list[int]
    repeats: int
    model_path: str
    data_dir: str
    extra: dict[str, Any] = field(default_factory=dict)


class Runner(Protocol):
    """One system under test. `decode` returns per-stream token timestamps (first = first token)."""

    def prefill(self, ids: list[int]) -> None: ...

    def decode(self, prompts: list[list[int]], n: int) -> list[list[float]] | None: ...


def english_text() -> str:
    """Real English prose that ships with every Python: the docstrings of some stdlib modules."""
    import importlib

    parts: list[str] = []
    for name in _TEXT_MODULES:
        module = importlib.import_module(name)
        parts.append(inspect.getdoc(module) or "")
        for _, obj in sorted(vars(module).items()):
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(obj, "__module__", "") == name:
                parts.append(inspect.getdoc(obj) or "")
    return "\n\n".join(p for p in parts if p)


def build_workload(model_path: Path, data_dir: Path, prefill_lengths: list[int], decode_tokens: int,
                   concurrency: list[int], repeats: int, decode_prompt_tokens: int = 32) -> Workload:
    """Tokenize `english_text()` with the model's own tokenizer and cut distinct windows from it."""
    from appliance.engine.loader import load_tokenizer

    tokens = load_tokenizer(str(model_path), data_dir).encode(english_text())
    need = max(prefill_lengths) + 100 * (repeats + 1) + 64 * max(concurrency)
    while len(tokens) < need:
        tokens = tokens + tokens

    def window(offset: int, length: int) -> list[int]:
        return tokens[offset:offset + length]

    prefill = {str(n): [window(100 * r, n) for r in range(repeats + 1)] for n in prefill_lengths}
    decode = [window(64 * i + 7, decode_prompt_tokens) for i in range(max(concurrency))]
    return Workload(prefill, decode, decode_tokens, sorted(set(concurrency)), repeats, str(model_path),
                    str(data_dir), {"text_tokens": len(tokens), "decode_prompt_tokens": decode_prompt_tokens})


# --- the systems -------------------------------------------------------------------------------------


class OursRunner:
    def __init__(self, w: Workload, spec: str) -> None:
        """`spec`: a dtype, with EAGER_SUFFIX for eager decode layers, COMPILED_SUFFIX for the torch.compile'd ones
        only, else the engine's default decode (fused and compiled layers, their builds waited for)."""
        from appliance.config import EngineConfig
        from appliance.engine.engine import LLMEngine
        from appliance.engine.loader import load_model
        from appliance.engine.sampling import SamplingParams

        started = time.perf_counter()
        loaded = load_model(w.model_path, Path(w.data_dir))
        longest = max(int(n) for n in w.prefill)
        per_stream = len(w.decode_prompts[0]) + w.decode_tokens
        pool_tokens = max(longest + 16, max(w.concurrency) * per_stream) * 5 // 4  # no preemption
        kv_mb = pool_tokens * loaded.config.kv_bytes_per_token(4) // 2**20 + 16
        dtype = spec.removesuffix(EAGER_SUFFIX).removesuffix(COMPILED_SUFFIX)
        self.engine = LLMEngine(loaded, EngineConfig(
            model=w.model_path, data_dir=Path(w.data_dir), dtype=dtype, kv_cache_mb=kv_mb,
            max_num_batched_tokens=max(2048, longest), max_num_seqs=max(32, max(w.concurrency)),
            enable_prefix_caching=False, compiled_decode=not spec.endswith(EAGER_SUFFIX),
            fused_decode_rows=0 if spec.endswith(COMPILED_SUFFIX) else EngineConfig.fused_decode_rows))
        self.load_s = time.perf_counter() - started  # what a server waits for: the builds finish while it serves
        self.compile_s = self.engine.runner.wait_for_builds()  # steady state: the compiled code, not its build
        self._params = SamplingParams
        self._seq = 0

    def prefill(self, ids: list[int]) -> None:
        self.engine.generate([ids], self._params(max_tokens=1, temperature=0.0, ignore_eos=True))

    def decode(self, prompts: list[list[int]], n: int) -> list[list[float]]:
        params = self._params(max_tokens=n, temperature=0.0, ignore_eos=True)
        times: dict[str, list[float]] = {}
        for prompt in prompts:
            self._seq += 1
            rid = f"bench-{self._seq}"
            times[rid] = []
            self.engine.add_request(rid, prompt, params)
        while self.engine.has_unfinished():
            outputs = self.engine.step()
            now = time.perf_counter()
            for out in outputs:
                times[out.request_id].extend([now] * len(out.token_ids))
        return list(times.values())


class HFRunner:
    def __init__(self, w: Workload) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        path = Path(w.model_path)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager").eval()

    def _generate(self, prompts: list[list[int]], n: int, streamer: Any = None) -> None:
        ids = self.torch.tensor(prompts, dtype=self.torch.long)
        with self.torch.inference_mode():
            self.model.generate(input_ids=ids, attention_mask=self.torch.ones_like(ids), max_new_tokens=n,
                                min_new_tokens=n, do_sample=False, streamer=streamer, pad_token_id=0)

    def prefill(self, ids: list[int]) -> None:
        self._generate([ids], 1)

    def decode(self, prompts: list[list[int]], n: int) -> list[list[float]]:
        if len({len(p) for p in prompts}) != 1:
            raise ValueError("batched HF decode needs prompts of one length (no padding)")
        times: list[list[float]] = [[] for _ in prompts]

        class Clock:  # a transformers streamer: put() gets the prompt first, then each new token batch
            seen_prompt = False

            def put(self, value: Any) -> None:
                if not self.seen_prompt:
                    self.seen_prompt = True
                    return
                now = time.perf_counter()
                for stream in times:
                    stream.append(now)

            def end(self) -> None:
                pass

        self._generate(prompts, n, Clock())
        return times


class LlamaCppRunner:
    def __init__(self, w: Workload) -> None:
        from llama_cpp import Llama

        longest = max(int(n) for n in w.prefill)
        n_ctx = max(longest, len(w.decode_prompts[0]) + w.decode_tokens) + 64
        self.llm = Llama(model_path=w.model_path, n_threads=2, n_threads_batch=2, n_ctx=n_ctx,
                         n_batch=max(2048, longest), flash_attn=True, verbose=False)  # its faster setting here

    def prefill(self, ids: list[int]) -> None:
        self.llm.reset()
        self.llm.eval(ids)
        self.llm.sample(top_k=1, temp=0.0)

    def decode(self, prompts: list[list[int]], n: int) -> list[list[float]] | None:
        if len(prompts) != 1:
            return None  # no batched decode in llama-cpp-python's API: single stream is the comparison
        self.llm.reset()
        stamps: list[float] = []
        for _ in self.llm.generate(prompts[0], top_k=1, top_p=1.0, temp=0.0, reset=True):
            stamps.append(time.perf_counter())
            if len(stamps) == n:
                break
        return [stamps]


def make_runner(system: str, w: Workload) -> Runner:
    if system.startswith(OURS_PREFIX):
        return OursRunner(w, system[len(OURS_PREFIX):])
    if system == "hf":
        return HFRunner(w)
    if system == "llama-cpp":
        return LlamaCppRunner(w)
    raise ValueError(f"unknown system {system!r}")


# --- measuring one system (inside its own process) ---------------------------------------------------


def decode_rate(streams: list[list[float]]) -> float:
    """Tokens/s after every stream has its first token: tokens stamped later / (last stamp - that moment)."""
    start = max(s[0] for s in streams)
    end = max(s[-1] for s in streams)
    tokens = sum(sum(1 for t in s if t > start) for s in streams)
    if tokens == 0 or end <= start:
        raise ValueError("decode produced too few tokens to time")
    return tokens / (end - start)


def _timed(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def measure_system(system: str, w: Workload) -> dict[str, Any]:
    """Load `system`, warm it up, and return medians (tokens/s), raw samples, load time and peak RSS."""
    started = time.perf_counter()
    runner = make_runner(system, w)
    load_s = getattr(runner, "load_s", time.perf_counter() - started)  # ours: without the background builds' wait
    prefill: dict[str, float] = {}
    samples: dict[str, list[float]] = {}
    for length, prompts in w.prefill.items():
        runner.prefill(prompts[0])  # warmup
        rates = [int(length) / _timed(functools.partial(runner.prefill, p)) for p in prompts[1:w.repeats + 1]]
        samples[f"prefill_{length}"] = rates
        prefill[length] = statistics.median(rates)
    decode: dict[str, float | None] = {}
    for conc in w.concurrency:
        prompts = w.decode_prompts[:conc]
        if runner.decode(prompts, min(8, w.decode_tokens)) is None:  # warmup, and "not supported"
            decode[str(conc)] = None
            continue
        rates = []
        for _ in range(w.repeats):
            streams = runner.decode(prompts, w.decode_tokens)
            assert streams is not None
            rates.append(decode_rate(streams))
        samples[f"decode_{conc}"] = rates
        decode[str(conc)] = statistics.median(rates)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"available": True, "load_s": load_s, "compile_s": getattr(runner, "compile_s", None),
            "prefill_tps": prefill, "decode_tps": decode, "peak_rss_mib": peak_mib, "samples": samples}


# --- the whole run -----------------------------------------------------------------------------------


def unavailable_reason(system: str) -> str | None:
    """Why a peer cannot run here (a missing package), or None."""
    needs = {"hf": ("transformers", "pip install transformers"),
             "llama-cpp": ("llama_cpp", "CMAKE_ARGS=-DGGML_NATIVE=ON pip install llama-cpp-python "
                                        "(or the project's `bench` extra)")}
    if system in needs and importlib.util.find_spec(needs[system][0]) is None:
        return f"{needs[system][0]} is not installed: {needs[system][1]}"
    return None


def _busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has been busy (all processes), from /proc/stat; 0 elsewhere."""
    stat = Path("/proc/stat")
    if not stat.is_file():
        return 0.0
    fields = [int(x) for x in stat.read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_for_idle(max_wait_s: float, busy_cores: float = 0.2) -> float:
    """Wait until the machine is idle for one second (< `busy_cores` in use), at most `max_wait_s`.

    Returns the cores in use during the last second polled.
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        before = _busy_cpu_seconds()
        time.sleep(1.0)
        used = _busy_cpu_seconds() - before
        if used < busy_cores or time.monotonic() >= deadline:
            return used


def _run_in_subprocess(system: str, workload_file: Path, timeout_s: int) -> dict[str, Any]:
    """Run one system in its own process; adds `other_load_cores`: the CPU (in cores) used by other
    processes while it ran, which should be near 0 for a figure worth keeping."""
    busy, ours, started = _busy_cpu_seconds(), _children_cpu_seconds(), time.monotonic()
    result = _run_system_process(system, workload_file, timeout_s)
    wall = time.monotonic() - started
    others = (_busy_cpu_seconds() - busy) - (_children_cpu_seconds() - ours)
    if result.get("available") and wall > 0:
        result["other_load_cores"] = max(0.0, others / wall)
    return result


def _run_system_process(system: str, workload_file: Path, timeout_s: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "appliance.bench.engine", "--system", system,
               "--workload", str(workload_file), "--out", str(out)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
        except subprocess.TimeoutExpired:
            return {"available": False, "reason": f"timed out after {timeout_s} s"}
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return {"available": False, "reason": f"exit {proc.returncode}: " + " | ".join(tail)}
        return json.loads(out.read_text())


def run_engine_bench(systems: list[str] | None = None, repeats: int = 3,
                     prefill_lengths: list[int] | None = None, decode_tokens: int = 128,
                     concurrency: list[int] | None = None, data_dir: Path | None = None,
                     model_path: Path | None = None, timeout_s: int = SYSTEM_TIMEOUT_S,
                     progress: Callable[[str], None] | None = None, wait_idle_s: float = 0.0,
                     busy_retries: int = 0) -> dict[str, Any]:
    """Measure `systems` one after another, each in its own process, on one workload.

    Returns {"machine", "workload", "systems": {name: result}, "ratios": {"A/B": {metric: x}}}; a
    system that cannot run has {"available": False, "reason": ...} and its ratios are left out.
    Metrics are `prefill_<L>` and `decode_<C>` (tokens/s) and `peak_rss_mib`. Before each system it
    waits up to `wait_idle_s` for the machine to go idle; each result says how busy the rest of the
    machine was while it ran (`other_load_cores`), and a disturbed system is measured again up to
    `busy_retries` times.
    """
    from appliance.bench.machine import describe_machine
    from appliance.config import Settings
    from appliance.engine.loader import default_model_path

    systems = systems or ["ours-float32", "ours-bfloat16", *PEERS]
    model_path = model_path or default_model_path()
    data_dir = Path(data_dir or Settings().data_dir).resolve()
    machine = describe_machine()  # before the run: its load average says whether the machine was idle
    w = build_workload(model_path, data_dir, prefill_lengths or [512, 2048], decode_tokens,
                       concurrency or [1, 4, 16], repeats)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-workload-") as tmp:
        workload_file = Path(tmp) / "workload.json"
        workload_file.write_text(json.dumps(asdict(w)))
        for system in systems:
            if progress:
                progress(f"measuring {system} ...")
            reason = unavailable_reason(system)
            for attempt in range(1 + busy_retries):  # rerun a system that other work disturbed
                if wait_idle_s > 0:
                    wait_for_idle(wait_idle_s)
                results[system] = ({"available": False, "reason": reason} if reason
                                   else _run_in_subprocess(system, workload_file, timeout_s))
                disturbed = results[system].get("other_load_cores", 0.0) > BUSY_CORES
                if not disturbed:
                    break
                if progress:
                    progress(f"{system}: other processes used {results[system]['other_load_cores']:.2f} "
                             f"cores meanwhile" + (", measuring again" if attempt < busy_retries else ""))
            if progress and not results[system]["available"]:
                progress(f"{system} unavailable: {results[system]['reason']}")
    workload = {"model": Path(w.model_path).name, "prefill_lengths": [int(n) for n in w.prefill],
                "decode_tokens": w.decode_tokens, "concurrency": w.concurrency, "repeats": w.repeats,
                **w.extra}
    return {"machine": machine, "workload": workload, "systems": results,
            "ratios": compute_ratios(results)}


# --- command line ------------------------------------------------------------------------------------


def _systems_for(vs: str, dtypes: str) -> list[str]:
    ours = [f"{OURS_PREFIX}{d.strip()}" for d in dtypes.split(",") if d.strip()]
    peers = {"all": list(PEERS), "none": [], "llama-cpp": ["llama-cpp"], "hf": ["hf"]}.get(vs)
    if peers is None:
        raise typer.BadParameter(f"--vs must be all, llama-cpp, hf or none (got {vs!r})")
    return ours + peers


def bench_engine(
    json_file: Annotated[Path | None, typer.Option("--json", help="also write the full result here")] = None,
    vs: Annotated[str, typer.Option(help="peers to compare with: all, llama-cpp, hf or none")] = "all",
    repeats: Annotated[int, typer.Option(min=1, help="repeats per figure (the median is reported)")] = 3,
    dtypes: Annotated[str, typer.Option(help="our engine's dtypes, comma-separated")] = "float32,bfloat16",
    decode_tokens: Annotated[int, typer.Option(min=2, help="tokens generated per decode stream")] = 128,
    docs: Annotated[bool, typer.Option("--docs/--no-docs", help="update docs/BENCHMARKS.md + plot")] = True,
    wait_idle: Annotated[float, typer.Option(help="seconds to wait for an idle machine before each system")
                         ] = 120.0,
    busy_retries: Annotated[int, typer.Option(min=0, help="reruns of a system that other work disturbed")
                            ] = 1,
) -> None:
    """Prefill, decode and concurrent decode tokens/s and peak memory: ours vs transformers and llama.cpp."""
    from rich.console import Console

    from appliance.bench.report import engine_rich_table, write_engine_report

    console = Console()
    if os.getloadavg()[0] > 0.5:
        console.print(f"[yellow]warning: load average {os.getloadavg()[0]:.2f} — other work on this machine "
                      "will slow every system; run on an idle machine for figures worth keeping[/yellow]")
    result = run_engine_bench(_systems_for(vs, dtypes), repeats=repeats, decode_tokens=decode_tokens,
                              progress=lambda msg: console.print(f"[dim]{msg}[/dim]"), wait_idle_s=wait_idle,
                              busy_retries=busy_retries)
    console.print(engine_rich_table(result))
    if json_file is not None:
        json_file.write_text(json.dumps(result, indent=2))
    if docs:
        for note in write_engine_report(result, Path("docs")):
            console.print(note)


def main(argv: list[str] | None = None) -> None:
    """Subprocess entry: measure one system on a workload file and write its result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--system", required=True)
    parser.add_argument("--workload", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    w = Workload(**json.loads(args.workload.read_text()))
    args.out.write_text(json.dumps(measure_system(args.system, w)))


if __name__ == "__main__":
    main()
