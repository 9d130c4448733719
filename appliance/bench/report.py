"""Turn a benchmark result into a rich table, a markdown section of docs/BENCHMARKS.md and a PNG.

`update_section(path, title, body)` replaces the `## <title>` section of a markdown file in place
(up to the next `## ` heading) and keeps every other section; a missing file is created with a short
intro and a Machine section, a missing section is appended.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from appliance.bench.engine_results import BUSY_CORES, LABELS, OURS_PREFIX, PEERS, metrics, peer_value
from appliance.bench.machine import machine_markdown

BENCHMARKS_FILE = "BENCHMARKS.md"
ENGINE_PLOT = "bench_engine.png"
_INTRO = ("# Benchmarks\n\nEvery figure below was taken by `appliance bench ...` in one run on the machine "
          "it names: peers side by side, medians of repeats. Each section is rewritten in place by its "
          "benchmark; the others are kept.\n")
# (ratio metric, peer, minimum): issue 2's performance targets against llama.cpp
TARGETS = (("prefill_2048", "llama-cpp", 1.5), ("decode_1", "llama-cpp", 1.0),
           ("decode_16", "llama-cpp", 3.0))


def update_section(path: Path, title: str, body: str, machine: dict[str, str] | None = None) -> None:
    """Write `## title` + body into `path`, replacing that section only (see the module doc)."""
    text = path.read_text() if path.is_file() else ""
    if not text:
        text = _INTRO
        if machine:
            text += f"\n## Machine\n\n{machine_markdown(machine)}\n"
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}[ \t]*\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def publish(console: Console, result: dict[str, Any], markdown: str, section: str, json_file: Path | None,
            docs: bool) -> None:
    """What a bench command does with its result: print `markdown`, write the raw `result` to `json_file` (when
    given) and, with `docs`, rewrite `section` of docs/BENCHMARKS.md."""
    console.print(markdown)
    if json_file is not None:
        json_file.write_text(json.dumps(result, indent=2))
    if docs:
        update_section(Path("docs") / BENCHMARKS_FILE, section, markdown, result["machine"])
        console.print(f"wrote docs/{BENCHMARKS_FILE} (section {section})")


def metric_label(metric: str) -> str:
    kind, _, arg = metric.partition("_")
    if kind == "prefill":
        return f"prefill {arg} tok (tok/s)"
    if kind == "decode":
        return "decode, 1 stream (tok/s)" if arg == "1" else f"decode, {arg} concurrent (agg tok/s)"
    return "peak RSS (MiB)"


def _label(system: str, res: dict[str, Any]) -> str:
    """The system's name, starred when other processes disturbed its measurement."""
    return LABELS.get(system, system) + (" *" if res.get("other_load_cores", 0.0) > BUSY_CORES else "")


def _fmt(value: float | None, ratio: bool = False) -> str:
    if value is None:
        return "—"
    if ratio:
        return f"{value:.2f}x"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def engine_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per metric; absolute figures per system, then ours/peer ratios."""
    available = {name: res for name, res in result["systems"].items() if res.get("available")}
    ours = [s for s in available if s.startswith(OURS_PREFIX)]
    peers = [p for p in PEERS if p in available]
    systems = {name: available[name] for name in ours + peers}
    header = ["metric", *(_label(s, r) for s, r in systems.items())]
    header += [f"{s.removeprefix(OURS_PREFIX)}/{p}" for p in peers for s in ours]
    keys = list(dict.fromkeys(k for res in systems.values() for k in metrics(res)))
    keys.sort(key=lambda k: k == "peak_rss_mib")
    rows = []
    for key in keys:
        row = [metric_label(key)]
        for name, res in systems.items():
            value = metrics(res).get(key)
            cell = _fmt(value)
            if value is None and name == "llama-cpp" and key.startswith("decode_"):
                cell = f"({_fmt(peer_value(name, res, key))} single)"
            row.append(cell)
        row += [_fmt(result["ratios"].get(f"{s}/{p}", {}).get(key), ratio=True) for p in peers for s in ours]
        rows.append(row)
    return header, rows


def target_lines(result: dict[str, Any]) -> list[str]:
    """Issue 2's targets against llama.cpp, met or not, for each of our dtypes."""
    lines = []
    for metric, peer, minimum in TARGETS:
        for name in result["systems"]:
            ratio = result["ratios"].get(f"{name}/{peer}", {}).get(metric)
            if name.startswith(OURS_PREFIX) and ratio is not None:
                verdict = "met" if ratio >= minimum else f"NOT met (gap {minimum / ratio:.2f}x)"
                lines.append(f"- {metric_label(metric)}, {LABELS.get(name, name)} vs {peer}: "
                             f"{ratio:.2f}x, target ≥ {minimum}x: {verdict}")
    return lines


def engine_rich_table(result: dict[str, Any]) -> Table:
    header, rows = engine_rows(result)
    table = Table(title=f"appliance bench engine — {result['workload']['model']}, "
                        f"median of {result['workload']['repeats']}")
    for i, col in enumerate(header):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def engine_markdown(result: dict[str, Any], plot_note: str) -> str:
    """The body of the `## Engine` section: workload, table, targets, unavailable peers, machine."""
    w = result["workload"]
    header, rows = engine_rows(result)
    method = (
        f"Model `{w['model']}` (the same GGUF file for every system), prompts cut from English text with "
        f"the model's tokenizer (the same token ids for every system). Prefill: prompts of "
        f"{', '.join(map(str, w['prefill_lengths']))} tokens, a distinct prompt per repeat, prefix caching "
        f"off; time = prompt + 1 token. Decode: {w['decode_tokens']} tokens per stream after a "
        f"{w.get('decode_prompt_tokens', '?')}-token prompt, greedy, EOS ignored; the rate counts the tokens "
        "after every stream has its first one. Concurrent: all streams submitted together (ours: "
        "continuous batching; transformers: one batched `generate`). llama-cpp-python has no batched "
        "decode, so its single stream is the comparison point for the concurrent rows. Peak RSS: each "
        f"system in its own process (`ru_maxrss`, includes loading). Median of {w['repeats']} repeats.")
    lines = [method,
             "", "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    targets = target_lines(result)
    if targets:
        lines += ["", "Issue 2 targets (against llama.cpp, same run):", "", *targets]
    missing = [(n, r["reason"]) for n, r in result["systems"].items() if not r.get("available")]
    if missing:
        lines += ["", "Not measured:", "", *(f"- {LABELS.get(n, n)}: {reason}" for n, reason in missing)]
    busy = [f"{LABELS.get(n, n)} {r['other_load_cores']:.2f}" for n, r in result["systems"].items()
            if r.get("available") and "other_load_cores" in r]
    if busy:
        lines += ["", "Other processes' CPU use while each system ran (cores; near 0 = undisturbed, "
                  f"* above {BUSY_CORES}): " + ", ".join(busy) + "."]
    loads = [f"{LABELS.get(n, n)} {r['load_s']:.1f} s" + (f" (compiled decode then built in the background "
                                                          f"in {r['compile_s']:.1f} s)" if r.get("compile_s") else "")
             for n, r in result["systems"].items() if r.get("available")]
    lines += ["", "Load time: " + ", ".join(loads) + ".", "", plot_note, "", "Machine:", "",
              machine_markdown(result["machine"]),
              "", "Reproduce: `appliance bench engine` (or `make bench-engine`); `--json FILE` keeps the raw "
              "samples."]
    return "\n".join(lines)


def plot_engine(result: dict[str, Any], png: Path) -> str | None:
    """Grouped bars of tokens/s per metric and system (log scale); None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    systems = {n: r for n, r in result["systems"].items() if r.get("available")}
    keys = [k for k in dict.fromkeys(k for r in systems.values() for k in metrics(r)) if k != "peak_rss_mib"]
    fig, ax = plt.subplots(figsize=(10, 4.8))
    width = 0.8 / max(1, len(systems))
    for i, (name, res) in enumerate(systems.items()):
        values = [peer_value(name, res, k) or 0.0 for k in keys]
        ax.bar([x + i * width for x in range(len(keys))], values, width, label=LABELS.get(name, name))
    ax.set_xticks([x + width * (len(systems) - 1) / 2 for x in range(len(keys))])
    ax.set_xticklabels([metric_label(k).replace(" (", "\n(") for k in keys], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("tokens/s (log)")
    ax.set_title(f"Engine throughput, {result['workload']['model']}, {result['machine']['cpu']} "
                 f"{result['machine']['cores']} cores (llama.cpp concurrent = its single stream)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return str(png)


def write_engine_report(result: dict[str, Any], docs_dir: Path) -> list[str]:
    """Update the Engine section of docs_dir/BENCHMARKS.md and write the plot; returns notes to print."""
    png = docs_dir / ENGINE_PLOT
    plotted = plot_engine(result, png)
    skipped = "plot skipped: matplotlib is not installed"
    plot_note = f"![engine throughput]({ENGINE_PLOT})" if plotted else f"({skipped})"
    target = docs_dir / BENCHMARKS_FILE
    update_section(target, "Engine", engine_markdown(result, plot_note), result["machine"])
    return [f"wrote {target}", f"wrote {png}" if plotted else skipped]
