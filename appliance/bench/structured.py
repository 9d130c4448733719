"""`appliance bench structured`: what a JSON schema costs decoding, what compiling one costs, and xgrammar against
llguidance (issue 21).

Decode: the engine in-process, configured as `appliance serve` configures it (`Settings().engine_config()`; the
compiled decode layers waited for), greedy, the same chat prompts with and without a grammar, at 1 and 16 streams
submitted together. The schemas (`decode_schema`) are an array of strings, and one of strings of at most 24
characters (the engine gives that one to llguidance: xgrammar handles a bounded repetition far more slowly), with
`minItems` = the token budget, so neither
can close before `max_tokens`; the unconstrained run ignores end-of-sequence: all generate exactly `tokens` tokens
a stream. A run's decode rate counts the tokens after every stream has its first one, over the
time from that step to the last (prefill excluded). The systems take turns (the order rotated each repeat:
the VM drifts by 20-30% over minutes), each constrained run is paired with the unconstrained run of its round, and
the figures are medians over repeats. The time spent in the engine's grammar masking (`GrammarMasks.apply`: the
rows' bitmask fills and the apply) is read off the engine's own sampler.

Compile: the engine's `GrammarCompiler` built fresh (its setup), then each schema's first compile (cold) and
the same schema again (cached). Libraries: `grammar_libs.compare_libraries`.
"""

from __future__ import annotations

import json
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import torch
import typer

from appliance.bench.engine import _busy_cpu_seconds, wait_for_idle
from appliance.bench.engine_results import BUSY_CORES
from appliance.bench.machine import describe_machine
from appliance.engine.grammar import GrammarMasks, GrammarSpec

if TYPE_CHECKING:
    from appliance.config import EngineConfig
    from appliance.engine.engine import LLMEngine
    from appliance.engine.grammar import GrammarState
    from appliance.engine.loader import LoadedModel

SECTION = "Structured output (JSON schema decoding)"
MAX_ITEM = 24  # the decode schema's maxLength
STREAMS = (1, 16)
PLAIN = "plain"
SYSTEMS: dict[str, int | None] = {PLAIN: None, "strings": None, f"strings <= {MAX_ITEM} chars": MAX_ITEM}  # maxLength
TARGET = 0.90  # issue 21: constrained decode at most 10% slower
TOPICS = ("fruit", "colours", "animals", "cities", "tools", "rivers", "planets", "sports", "flowers", "trees",
          "birds", "fish", "metals", "instruments", "vegetables", "countries")
EXPECTED = ("the constrained decode costs < 3% at 1 stream (a ~3 µs mask fill and a ~30 µs apply against a "
            "~10 ms step) and < 5% at 16 streams (16 fills and one [16, V] apply against a ~60 ms step).")

MASK_DIFFERENCES = ("where they differ, xgrammar mostly allows more: a lone token where the next bytes are forced and "
                    "a longer token holds them (`\"` before `:`; llguidance allows only `\":`), and the vocabulary's "
                    "special tokens inside a string; inside a string llguidance allows tokens that end in a backslash "
                    "(an escape's start), which xgrammar does not.")

_COUNTRIES = ["Argentina", "Australia", "Austria", "Belgium", "Brazil", "Canada", "Chile", "China", "Denmark", "Egypt",
              "Finland", "France", "Germany", "Greece", "India", "Ireland", "Italy", "Japan", "Kenya", "Mexico",
              "Netherlands", "Norway", "Peru", "Poland", "Portugal", "Spain", "Sweden", "Switzerland", "Turkey",
              "Vietnam"]
_COLOURS = ["red", "orange", "yellow", "green", "blue", "indigo", "violet", "black", "white", "grey", "brown",
            "pink"]
_FRUIT = ["apple", "banana", "cherry", "damson plum", "elderberry", "fig", "grape", "honeydew melon"]
_STATUS = ["draft", "submitted", "approved", "rejected", "shipped", "delivered", "returned", "cancelled"]


def decode_schema(min_items: int, max_length: int | None = None) -> dict[str, Any]:
    """An array of strings (of at most `max_length` characters) that cannot close before `min_items` items: every
    item takes at least one token, so a grammar of it never ends within `min_items` tokens."""
    item: dict[str, Any] = {"type": "string"} if max_length is None else {"type": "string", "maxLength": max_length}
    return {"type": "array", "items": item, "minItems": min_items}


# name -> (schema, a valid document of it): compiled, and walked token by token by the library comparison
SCHEMAS: dict[str, tuple[dict[str, Any], Any]] = {
    "flat": ({"type": "object", "additionalProperties": False,
              "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "email": {"type": "string"},
                             "active": {"type": "boolean"}},
              "required": ["name", "age", "email", "active"]},
             {"name": "Ada Lovelace", "age": 36, "email": "ada@example.org", "active": True}),
    "nested": ({"type": "object", "additionalProperties": False, "required": ["user", "address"],
                "properties": {
                    "user": {"type": "object", "additionalProperties": False, "required": ["name", "roles"],
                             "properties": {"name": {"type": "string"},
                                            "roles": {"type": "array", "items": {"type": "string"}}}},
                    "address": {"type": "object", "additionalProperties": False,
                                "required": ["street", "city", "geo"],
                                "properties": {"street": {"type": "string"}, "city": {"type": "string"},
                                               "geo": {"type": "object", "additionalProperties": False,
                                                       "required": ["lat", "lon"],
                                                       "properties": {"lat": {"type": "number"},
                                                                      "lon": {"type": "number"}}}}}}},
               {"user": {"name": "Grace Hopper", "roles": ["admiral", "programmer"]},
                "address": {"street": "12 Harbour Road", "city": "Arlington", "geo": {"lat": 38.88, "lon": -77.1}}}),
    "array of objects": ({"type": "array", "minItems": 1,
                          "items": {"type": "object", "additionalProperties": False,
                                    "required": ["id", "title", "price"],
                                    "properties": {"id": {"type": "integer"}, "title": {"type": "string"},
                                                   "price": {"type": "number"}}}},
                         [{"id": 1, "title": "Kettle", "price": 24.5}, {"id": 2, "title": "Teapot", "price": 18.0},
                          {"id": 3, "title": "Mugs, set of four", "price": 12.75}]),
    "enum-heavy": ({"type": "object", "additionalProperties": False,
                    "required": ["country", "colour", "size", "status", "day"],
                    "properties": {"country": {"enum": _COUNTRIES}, "colour": {"enum": _COLOURS},
                                   "size": {"enum": ["XS", "S", "M", "L", "XL", "XXL"]}, "status": {"enum": _STATUS},
                                   "day": {"enum": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday",
                                                    "Saturday", "Sunday"]}}},
                   {"country": "Switzerland", "colour": "indigo", "size": "XL", "status": "delivered",
                    "day": "Thursday"}),
    "strings (decode's)": (decode_schema(8), _FRUIT),
    f"strings <= {MAX_ITEM} chars (decode's)": (decode_schema(8, MAX_ITEM), _FRUIT),
}


def array_prefix_items(text: str, max_length: int | None = None) -> list[str]:
    """The items of `text`, a JSON array of strings (of at most `max_length` characters) cut anywhere (the last
    item may be cut short); ValueError where `text` is no prefix of such an array."""
    completions = ("", "]", '"]', '""]', 'n"]', '0"]', '00"]', '000"]', '0000"]')
    for end in completions:
        try:
            items = json.loads(text + end)
        except json.JSONDecodeError:
            continue
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise ValueError(f"not an array of strings: {text!r}")
        if max_length is not None and any(len(item) > max_length for item in items):
            raise ValueError(f"an item is longer than {max_length} characters: {text!r}")
        return items
    raise ValueError(f"not the start of a JSON array of strings: {text!r}")


class _TimedMasks(GrammarMasks):
    """The engine's grammar masking, its time added up (installed on the engine's sampler by the bench)."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__(vocab_size)
        self.seconds = 0.0
        self.calls = 0

    def apply(self, logits: torch.Tensor, states: list[GrammarState | None]) -> None:
        started = time.perf_counter()
        super().apply(logits, states)
        self.seconds += time.perf_counter() - started
        self.calls += 1


def _prompts(engine: LLMEngine, streams: int) -> list[list[int]]:
    from appliance.engine.tokenizer import ChatMessage

    return [engine.tokenizer.apply_chat_template([ChatMessage(
        "user", f"List {TOPICS[i % len(TOPICS)]} as a JSON array of short strings.")]) for i in range(streams)]


def decode_run(engine: LLMEngine, prompts: list[list[int]], tokens: int, grammar: GrammarSpec | None,
               tag: str) -> dict[str, Any]:
    """The prompts submitted together and stepped to the end: the decode rate (see the module doc), the mean step
    in that window, each stream's token count, finish reason and text, and the time of the grammar masking."""
    from appliance.engine.sampling import SamplingParams

    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True, grammar=grammar)
    masks = engine.runner.sampler.grammar_masks
    timed = masks if isinstance(masks, _TimedMasks) else None
    masked_before = (timed.seconds, timed.calls) if timed else (0.0, 0)
    busy, ours, started = _busy_cpu_seconds(), _own_cpu_seconds(), time.perf_counter()
    ids = [f"structured-{tag}-{time.monotonic_ns()}-{i}" for i in range(len(prompts))]
    for rid, prompt in zip(ids, prompts, strict=True):
        engine.add_request(rid, prompt, params)
    times: dict[str, list[float]] = {rid: [] for rid in ids}
    texts = dict.fromkeys(ids, "")
    reasons: dict[str, str | None] = dict.fromkeys(ids)
    counts = dict.fromkeys(ids, 0)
    steps: list[float] = []
    while engine.has_unfinished():
        outputs = engine.step()
        now = time.perf_counter()
        steps.append(now)
        for out in outputs:
            times[out.request_id].extend([now] * len(out.token_ids))
            texts[out.request_id] += out.text
            counts[out.request_id] = out.num_output_tokens
            if out.finished:
                reasons[out.request_id] = out.finish_reason
    others = (_busy_cpu_seconds() - busy) - (_own_cpu_seconds() - ours)
    wall = time.perf_counter() - started
    start = max(t[0] for t in times.values())
    end = max(t[-1] for t in times.values())
    after = sum(1 for t in times.values() for at in t if at > start)
    window_steps = sum(1 for at in steps if start < at <= end)
    return {"tok_s": after / (end - start) if end > start else 0.0,
            "step_ms": 1e3 * (end - start) / max(1, window_steps),
            "mask_ms": 1e3 * (timed.seconds - masked_before[0]) / max(1, timed.calls - masked_before[1])
            if timed else 0.0,
            "other_cores": max(0.0, others / wall) if wall > 0 else 0.0,
            "tokens": [counts[r] for r in ids], "finish": [reasons[r] for r in ids], "texts": [texts[r] for r in ids]}


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def compile_times(engine: LLMEngine, schemas: dict[str, dict[str, Any]], repeats: int, cached_calls: int = 20
                  ) -> dict[str, Any]:
    """The engine's GrammarCompiler built afresh `repeats` times: its setup, then per schema the first compile
    (cold) and `cached_calls` more (cached); medians in ms."""
    from appliance.engine.grammar import GrammarCompiler

    setup: list[float] = []
    cold: dict[str, list[float]] = {n: [] for n in schemas}
    cached: dict[str, list[float]] = {n: [] for n in schemas}
    vocab = engine.model.config.vocab_size
    for _ in range(repeats):
        started = time.perf_counter()
        compiler = GrammarCompiler(engine.tokenizer, vocab)
        setup.append(time.perf_counter() - started)
        for name, schema in schemas.items():
            spec = GrammarSpec.json_schema(schema)
            started = time.perf_counter()
            compiler.compile(spec)
            cold[name].append(time.perf_counter() - started)
            for _ in range(cached_calls):
                started = time.perf_counter()
                compiler.compile(GrammarSpec.json_schema(schema))  # an equal spec, as a new request brings
                cached[name].append(time.perf_counter() - started)
    return {"setup_ms": statistics.median(setup) * 1e3, "repeats": repeats, "cached_calls": cached_calls,
            "schemas": {n: {"cold_ms": statistics.median(cold[n]) * 1e3,
                            "cached_ms": statistics.median(cached[n]) * 1e3} for n in schemas}}


def run_structured_bench(repeats: int = 7, tokens: int = 128, streams: tuple[int, ...] = STREAMS,
                         config: EngineConfig | None = None, loaded: LoadedModel | None = None,
                         lib_repeats: int = 5, wait_idle_s: float = 0.0, busy_retries: int = 0,
                         say: Callable[[str], None] = print) -> dict[str, Any]:
    """Everything of the module doc; `config` defaults to the served engine's (`Settings().engine_config()`). Before
    each round, up to `wait_idle_s` for the machine to go idle; each run says how busy the rest of the machine was
    (`other_cores`), and a round with a run that other work disturbed is measured again up to `busy_retries` times
    (then kept, marked, and left out of the medians where undisturbed rounds exist)."""
    from appliance.bench.grammar_libs import compare_libraries
    from appliance.config import Settings
    from appliance.engine.engine import LLMEngine
    from appliance.engine.loader import load_model

    machine = describe_machine()  # before the run: its load average says whether the machine was idle
    config = config or Settings().engine_config()
    loaded = loaded or load_model(config.model, config.data_dir)
    engine = LLMEngine(loaded, config)
    compiled = engine.runner.compiled
    if compiled is not None:
        say("waiting for the compiled decode layers ...")
        compiled.wait()  # steady state: measure the graphs, not their build
    vocab = engine.model.config.vocab_size
    say("the libraries side by side ...")
    libraries = compare_libraries(engine.tokenizer, vocab, SCHEMAS, repeats=lib_repeats,
                                  apply_repeats=10 * lib_repeats)
    say("compile times ...")
    schemas = {name: decode_schema(tokens, bound) for name, bound in SYSTEMS.items() if name != PLAIN}
    compile_schemas = {n: s for n, (s, _) in SCHEMAS.items() if "decode's" not in n}
    compile_schemas.update({f"{n} (decode's, minItems {tokens})": s for n, s in schemas.items()})
    compiles = compile_times(engine, compile_schemas, lib_repeats)
    engine.runner.sampler.grammar_masks = _TimedMasks(vocab)
    grammars = {PLAIN: None, **{n: GrammarSpec.json_schema(s) for n, s in schemas.items()}}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {str(n): {s: [] for s in grammars} for n in streams}
    say("warm-up ...")
    for n in streams:  # warm-up: the grammars compiled, the batch shapes seen
        for grammar in grammars.values():
            decode_run(engine, _prompts(engine, n), min(tokens, 16), grammar, "warm")
    names = list(grammars)
    disturbed: dict[str, list[bool]] = {str(n): [] for n in streams}
    for repeat in range(repeats):
        order = names[repeat % len(names):] + names[:repeat % len(names)]
        for n in streams:
            prompts = _prompts(engine, n)
            for attempt in range(1 + busy_retries):  # a round other work disturbed is measured again
                if wait_idle_s > 0:
                    wait_for_idle(wait_idle_s)
                group = {name: decode_run(engine, prompts, tokens, grammars[name], f"{repeat}") for name in order}
                busy = max(run["other_cores"] for run in group.values())
                say(f"repeat {repeat + 1}/{repeats}, {n} stream(s): " + ", ".join(
                    f"{name} {group[name]['tok_s']:.1f} tok/s" for name in names)
                    + (f" (other processes used {busy:.2f} cores)" if busy > BUSY_CORES else ""))
                if busy <= BUSY_CORES or attempt == busy_retries:
                    break
            group[PLAIN].pop("texts")  # free text, nothing to check
            for name in names:
                runs[str(n)][name].append(group[name])
            disturbed[str(n)].append(busy > BUSY_CORES)
    return {"machine": machine, "config": {"dtype": str(engine.dtype).removeprefix("torch."),
                                           "device": str(engine.device), "compiled_decode": compiled is not None},
            "repeats": repeats, "busy_retries": busy_retries, "tokens": tokens, "schemas": schemas,
            "libraries": libraries, "compile": compiles, "runs": runs, "disturbed": disturbed,
            "summary": summarize(runs, disturbed)}


def summarize(runs: dict[str, dict[str, list[dict[str, Any]]]], disturbed: dict[str, list[bool]] | None = None
              ) -> dict[str, dict[str, dict[str, Any]]]:
    """Per stream count and system, over the rounds other work did not disturb (all of them if every one was):
    median tok/s and step, the median of the ratios to the plain run of the same round, the masking's time a step;
    over every round: whether every stream generated the same count of tokens, and how many constrained outputs
    are valid prefixes of their schema."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for n, every in runs.items():
        flags = (disturbed or {}).get(n) or [False] * len(every[PLAIN])
        keep = [i for i, busy in enumerate(flags) if not busy] or list(range(len(flags)))
        systems = {name: [rs[i] for i in keep] for name, rs in every.items()}
        plain = systems[PLAIN]
        summary[n] = {}
        for name, system in systems.items():
            ratios = [r["tok_s"] / p["tok_s"] for p, r in zip(plain, system, strict=True)]
            figures: dict[str, Any] = {
                "tok_s": statistics.median(r["tok_s"] for r in system),
                "step_ms": statistics.median(r["step_ms"] for r in system),
                "ratio": statistics.median(ratios), "ratios": ratios,
                "mask_ms": statistics.median(r["mask_ms"] for r in system),
                "other_cores": statistics.median(r["other_cores"] for r in system),
                "other_cores_max": max(r["other_cores"] for r in system),
                "rounds": len(keep), "rounds_run": len(flags),
                "same_length": all(t == r["tokens"][0] and f == "length" for r in every[PLAIN] + every[name]
                                   for t, f in zip(r["tokens"], r["finish"], strict=True))}
            if name != PLAIN:
                texts = [text for r in every[name] for text in r["texts"]]
                figures["outputs"], figures["valid"] = len(texts), sum(_valid(t, SYSTEMS[name]) for t in texts)
            summary[n][name] = figures
    return summary


def _valid(text: str, max_length: int | None) -> bool:
    try:
        array_prefix_items(text, max_length)
    except ValueError:
        return False
    return True


def _lib_lines(libs: dict[str, Any]) -> list[str]:
    x, g = libs["xgrammar"], libs["llguidance"]
    names = list(x["compile_ms"])

    def num(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    def fill(lib: dict[str, Any], name: str | None) -> str:
        f = lib if name is None else lib["fill"].get(name)
        if not f or "fill_us_median" not in f:
            return "-"
        return f"{f['fill_us_median']:.1f} / {f['fill_us_mean']:.1f} / {f['fill_us_max']:.0f}"

    lines = [f"| | xgrammar {x['version']} | llguidance {g['version']} |", "| --- | ---: | ---: |",
             f"| tokenizer setup s | {num(x['setup_s'], 2)} | {num(g['setup_s'], 2)} |"]
    lines += [f"| compile {n} ms | {num(x['compile_ms'][n], 1)} | {num(g['compile_ms'].get(n), 1)} |" for n in names]
    lines += [f"| mask fill {n} µs, median / mean / max | {fill(x, n)} | {fill(g, n)} |" for n in names]
    lines += [f"| mask fill, all {x['positions']} positions, µs median / mean / max | {fill(x, None)} | "
              f"{fill(g, None)} |",
              f"| apply [16, V] µs | {num(x['apply_us'], 0)} | {num(g['apply_us'], 0)} |"]
    return lines


def structured_markdown(result: dict[str, Any]) -> str:
    """The "Structured output (JSON schema decoding)" section of docs/BENCHMARKS.md."""
    m, s, c, libs = result["machine"], result["summary"], result["compile"], result["libraries"]
    cfg, tokens = result["config"], result["tokens"]
    schemas = "; ".join(f"{name}: `{json.dumps(schema)}`" for name, schema in result["schemas"].items())
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, ISA {m['isa']}, torch {m['torch']} "
        f"({m['torch_threads']} threads), CUDA: {m['cuda']}. Load average at the start: {m['load_average']}.",
        f"`appliance bench structured --repeats {result['repeats']} --tokens {tokens}`: the embedded model "
        f"in-process, configured as served ({cfg['dtype']} on {cfg['device']}, compiled decode "
        f"{'on' if cfg['compiled_decode'] else 'off'}), greedy, the same chat prompts with no grammar (`plain`, "
        f"end-of-sequence ignored) and with each schema ({schemas}: neither can close before `max_tokens`; the "
        "engine constrains the one with `maxLength` with llguidance, the other with xgrammar), "
        f"{tokens} tokens a stream. Decode rate: the tokens after every stream has its first one, over the time from "
        "that step to the last. The systems take turns, the order rotated each repeat; medians of "
        f"{result['repeats']} repeats (a round that other processes disturbed, using more than {BUSY_CORES} cores, "
        f"measured again, at most {result.get('busy_retries', 0)} times; the rounds still disturbed are left out: "
        "*rounds*), the ratio the median of "
        "each run over the plain run of its round. "
        "*Masking*: the engine's `GrammarMasks.apply` a step (every row's bitmask fill and the one apply), timed on "
        "the engine's own sampler.",
        "",
        "| streams | grammar | tok/s | / plain | target >= 0.90x | step ms | masking ms a step | valid outputs "
        "| rounds |",
        "| ---: | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for n, systems in s.items():
        for name, f in systems.items():
            plain = name == PLAIN
            verdict = "" if plain else "met" if round(f["ratio"], 3) >= TARGET else "NOT met"
            valid = "-" if plain else f"{f['valid']}/{f['outputs']}"
            lines.append(f"| {n} | {name} | {f['tok_s']:.1f} | {f['ratio']:.3f}x | {verdict} | {f['step_ms']:.1f} | "
                         f"{'-' if plain else format(f['mask_ms'], '.2f')} | {valid} | "
                         f"{f.get('rounds', '-')}/{f.get('rounds_run', '-')} |")
    per_pair = "; ".join(f"{name} at {n}: " + " ".join(f"{r:.2f}" for r in f["ratios"])
                         for n, systems in s.items() for name, f in systems.items() if name != PLAIN)
    same = all(f["same_length"] for systems in s.values() for f in systems.values())
    others = [f["other_cores"] for systems in s.values() for f in systems.values()]
    others_max = max(f["other_cores_max"] for systems in s.values() for f in systems.values())
    lines += ["", f"Ratios of each round: {per_pair}. Every stream of every run generated exactly {tokens} tokens: "
                  f"{'yes' if same else 'NO'}. *Valid outputs*: constrained outputs that parse as the start of a JSON "
                  "array of strings (within the bound), cut at `max_tokens`. Other processes' CPU use during the "
                  f"runs (cores; near 0 = undisturbed): median {statistics.median(others):.2f}, the busiest run "
                  f"{others_max:.2f}.",
              "", "Schema compile, the engine's `GrammarCompiler` (xgrammar with its own cache off, or llguidance "
                  "for a schema with `minLength`/`maxLength`; ours keeps the last 64 grammars): a fresh compiler's "
                  f"setup (both libraries read the vocabulary) {c['setup_ms']:.0f} ms; medians of {c['repeats']} "
                  "fresh compilers:",
              "", "| schema | first compile (cold) ms | cached ms |", "| --- | ---: | ---: |"]
    lines += [f"| {n} | {f['cold_ms']:.1f} | {f['cached_ms']:.3f} |" for n, f in c["schemas"].items()]
    same_masks = (f" The two allowed the same tokens at {libs['same_masks']} of the {libs['xgrammar']['positions']} "
                  f"positions; {MASK_DIFFERENCES}" if "same_masks" in libs else "")
    lines += ["", "The libraries side by side (issue 21: \"measure both briefly and pick\"), on the model's "
                  f"vocabulary (V = {libs['vocab']}): tokenizer setup (xgrammar: the engine's `xgrammar_compiler`; "
                  "llguidance: `LLTokenizer` from the tokenizer's JSON); each schema's compile (llguidance: the "
                  "grammar and an `LLMatcher`, which builds the rest lazily, during the fills); one mask row filled "
                  "at each position of a valid document of each schema, walked token by token; each library's "
                  "apply of one bitmask to [16, V] float32 logits (the same bitmask for both: 16 masks from those "
                  f"walks, a median {libs['allowed_per_row']:.0f} tokens allowed a row; xgrammar's "
                  "`apply_token_bitmask_inplace` with the rows' indices, as the engine calls it; llguidance's "
                  f"`llguidance.torch.apply_token_bitmask_inplace`, a `torch.compile`d kernel).{same_masks}", "",
              *_lib_lines(libs),
              "", f"Expected before the first run (written down then): {EXPECTED}", "",
              "Measured: " + "; ".join(_measured(s)) + "."]
    return "\n".join(lines)


def _measured(summary: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Per constrained system and stream count: its cost against plain and the masking's share of its step."""
    return [f"{name} at {n} stream{'s' if n != '1' else ''} {f['ratio']:.3f}x plain's rate "
            f"(masking {f['mask_ms']:.2f} ms of a {f['step_ms']:.1f} ms step, {100 * f['mask_ms'] / f['step_ms']:.1f}%)"
            for n, systems in summary.items() for name, f in systems.items() if name != PLAIN]


def bench_structured(
    repeats: Annotated[int, typer.Option(min=1, help="pairs of runs per stream count (medians reported)")] = 7,
    tokens: Annotated[int, typer.Option(min=4, max=2048, help="tokens a stream generates")] = 128,
    quick: Annotated[bool, typer.Option(help="a tiny run (1 repeat, 16 tokens, eager decode): a smoke test")] = False,
    json_file: Annotated[Path | None, typer.Option("--json", help="also write the full result here")] = None,
    docs: Annotated[bool, typer.Option("--docs/--no-docs", help="update docs/BENCHMARKS.md")] = True,
    wait_idle: Annotated[float, typer.Option(help="seconds to wait for an idle machine before each round")] = 60.0,
    busy_retries: Annotated[int, typer.Option(min=0, help="reruns of a round that other work disturbed")] = 2,
) -> None:
    """Decode tok/s with a JSON schema against without (1 and 16 streams), schema compile times, and xgrammar
    against llguidance."""
    from dataclasses import replace

    from rich.console import Console

    from appliance.bench.report import publish
    from appliance.config import Settings

    console = Console()
    config = Settings().engine_config()
    lib_repeats = 5
    if quick:
        repeats, tokens, lib_repeats = 1, 16, 1
        config = replace(config, compiled_decode=False)
    result = run_structured_bench(repeats, tokens, config=config, lib_repeats=lib_repeats, wait_idle_s=wait_idle,
                                  busy_retries=busy_retries,
                                  say=lambda msg: console.print(msg, style="dim", markup=False, highlight=False))
    publish(console, result, structured_markdown(result), SECTION, json_file, docs and not quick)
