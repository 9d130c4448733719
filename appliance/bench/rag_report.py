"""The "RAG" section of docs/BENCHMARKS.md and its plot, from `run_rag_bench`'s result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance.bench.machine import machine_markdown
from appliance.config import BLEND_SELECT

PLOT = Path("docs/bench_rag.png")


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b else "-"


def _system_table(runs: dict[str, dict[str, dict[str, float]]], levels: list[str], stat: str) -> list[str]:
    first = levels[0]
    peer = runs.get("llama.cpp", {}).get(first, {}).get(stat)
    off = runs.get("off", {}).get(first, {}).get(stat)
    head = (f"| system | TTFT p50 ms | TTFT p99 ms | TTFT mean ms | llama.cpp {stat[5:-3]} / this | off / this | "
            + " | ".join(f"req/s c={c}" for c in levels) + " | req/s c=" + levels[-1] + " vs llama.cpp |")
    lines = [head, "|" + "|".join(["---"] + ["---:"] * (6 + len(levels))) + "|"]
    for name, by_level in runs.items():
        lv = by_level[first]
        rates = [by_level[c]["requests_per_s"] for c in levels]
        peer_rate = runs.get("llama.cpp", {}).get(levels[-1], {}).get("requests_per_s")
        lines.append(f"| {name} | {lv['ttft_p50_ms']:.0f} | {lv['ttft_p99_ms']:.0f} | {lv['ttft_mean_ms']:.0f} | "
                     f"{_ratio(peer, lv[stat]) if peer else '-'} | {_ratio(off, lv[stat]) if off else '-'} | "
                     + " | ".join(f"{r:.2f}" for r in rates)
                     + f" | {_ratio(rates[-1], peer_rate) if peer_rate else '-'} |")
    return lines


def _fidelity_table(fid: dict[str, dict[str, float]]) -> list[str]:
    lines = ["| system vs off | answers | first token agrees | token F1 | same citations | identical answer |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, f in fid.items():
        lines.append(f"| {name} | {f['answers']} | {f['first_token_agreement']:.0%} | {f['token_f1']:.2f} | "
                     f"{f['same_citations']:.0%} | {f['exact_match']:.0%} |")
    return lines


def _phase_table(runs: dict[str, dict[str, dict[str, float]]], level: str, retrieval_ms: float) -> list[str]:
    lines = ["| mode | retrieval ms | queue ms | KV fill ms (copy + selection) | compute to first token ms | "
             "prompt tokens computed | recomputed | reused | encoded first |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, by_level in runs.items():
        lv = by_level[level]
        if "queue_s_mean" not in lv:
            continue
        queue, fill = lv["queue_s_mean"] * 1000, lv["fill_s_mean"] * 1000
        lines.append(f"| {name} | {retrieval_ms:.0f} | {queue:.0f} | {fill:.0f} | "
                     f"{lv['ttft_mean_ms'] - queue - fill:.0f} | {lv['computed_mean']:.0f} | "
                     f"{lv['recomputed_mean']:.0f} | {lv['reused_mean']:.0f} | {lv['encoded_mean']:.0f} |")
    return lines


def _targets(result: dict[str, Any], levels: list[str]) -> list[str]:
    """The issue's targets for `blend`, each with the figure this run reached."""
    first, last = levels[0], levels[-1]

    def stat(w: str, name: str, level: str, key: str) -> float | None:
        return result.get(w, {}).get(name, {}).get(level, {}).get(key)

    def speedup(w: str, key: str, level: str, peer: str) -> float | None:
        ours, theirs = stat(w, "blend", level, key), stat(w, peer, level, key)
        if ours is None or theirs is None:
            return None
        return theirs / ours if key.startswith("ttft") else ours / theirs

    checks = [("(B) TTFT p50, llama.cpp / blend", speedup("B", "ttft_p50_ms", first, "llama.cpp"), 10.0),
              ("(B) TTFT p50, off / blend", speedup("B", "ttft_p50_ms", first, "off"), 5.0),
              ("(A) mean TTFT, llama.cpp / blend", speedup("A", "ttft_mean_ms", first, "llama.cpp"), 3.0)]
    checks += [(f"({w}) req/s at c={last}, blend / llama.cpp", speedup(w, "requests_per_s", last, "llama.cpp"), 3.0)
               for w in ("A", "B")]
    lines = ["| target (blend) | wanted | reached | met |", "|---|---:|---:|:---:|"]
    for label, value, wanted in checks:
        reached, met = ("-", "-") if value is None else (f"{value:.1f}x", "yes" if value >= wanted else "no")
        lines.append(f"| {label} | >= {wanted:.0f}x | {reached} | {met} |")
    for w in ("A", "B"):
        fid = result.get(f"{w}_fidelity", {}).get("blend")
        if fid:
            lines.append(f"| ({w}) answer token F1 vs off | >= 0.90 | {fid['token_f1']:.2f} | "
                         f"{'yes' if fid['token_f1'] >= 0.9 else 'no'} |")
            lines.append(f"| ({w}) same citations as off | >= 90% | {fid['same_citations']:.0%} | "
                         f"{'yes' if fid['same_citations'] >= 0.9 else 'no'} |")
    return lines


def _gold_lines(gold: dict[str, Any] | None) -> list[str]:
    """Workload (G)'s paragraph and table, or nothing when the run had none."""
    if not gold:
        return []
    lines = [f"**(G) gold answers**: the first {gold['questions']} questions of the `{gold['set']}` gold set "
             f"(`appliance/bench/gold_sets.py`; each asks for a short answer) over the "
             f"{gold['corpus']['documents']} pages that answer them, pre-encoded as in (B); concurrency 1, greedy. "
             "Right: the gold answer in the answer's first line; the ratio to `off`'s with a paired bootstrap "
             f"95% interval. Mean prompt {gold['prompt_tokens_mean']:.0f} tokens.", "",
             "| system | accuracy | / off [95% CI] | same verdict as off | TTFT p50 ms |", "|---|---:|---:|---:|---:|"]
    for name, row in gold["systems"].items():
        ratio = (f"{row['ratio']:.2f} [{row['ratio_low']:.2f}, {row['ratio_high']:.2f}]" if "ratio" in row
                 else "1" if name == "off" else "-")
        same = f"{row['same_verdict']:.0%}" if "same_verdict" in row else "100%" if name == "off" else "-"
        lines.append(f"| {name} | {row['accuracy']:.3f} | {ratio} | {same} | {row['ttft_p50_ms']:.0f} |")
    return [*lines, ""]


def rag_markdown(result: dict[str, Any]) -> str:
    w, warm = result["workload"], result["warm"]
    levels = [str(c) for c in w["concurrency"]]
    pydoc, answers = result["corpus"]["pydoc"], result["corpus"]["pydoc-answers"]
    lines = [
        "Headline of the document KV cache (`appliance bench rag`). Every system gets the same prompt token ids "
        f"(hybrid retrieval, k={w['k']} chunks of <= 256 tokens, passages in canonical order, built once); greedy, "
        f"max_tokens={w['max_tokens']}; TTFT from submission to the first token (retrieval, identical for all, "
        "is listed as a phase). llama.cpp = `llama-cpp-python[server]` OpenAI server on the same GGUF, RAM "
        f"prompt cache on, same thread count. Ours: one fresh engine per system, {warm['dtype']} (auto), "
        f"`APPLIANCE_DOC_CACHE=<mode>` (blend: 15% of the reused tokens, chosen by `{BLEND_SELECT}`, + 4 leading "
        "tokens per chunk recomputed). "
        "In (B) the systems run side by side in time, every level on each system in turn, so the machine's "
        "drift over the run enters its comparisons little; (A) runs one system after another.",
        "",
        f"**(A) skewed traffic** over python3.11-doc ({pydoc['documents']} pages, {pydoc['chunks']} chunks): "
        f"the 40 hand-written questions with Zipf(1.1) popularity in 5 phrasings; the first half of the traffic "
        f"({w['segment'] * len(levels)} requests, concurrency 4) warms each system, then {w['segment']} fresh "
        "requests per level, caches carried over. Mean prompt "
        f"{w['prompt_tokens_mean']['A']:.0f} tokens.",
        "",
        *_system_table(result["A"], levels, "ttft_mean_ms"),
        "",
        f"At a level above {w['segment']}, the {w['segment']} requests of its segment are all in flight at once: "
        f"the concurrency reached is {w['segment']}. `blend@R` rows: `blend` recomputing a share R of the reused "
        "chunk tokens instead of 0.15.",
        "",
        f"**(B) pre-encoded collection, questions never asked before**: the {answers['documents']} pages that "
        f"answer the questions ({warm['chunks']} chunks, {warm['tokens']} tokens) encoded ahead of time "
        f"({warm['encoded']} encoded by this run in {warm['seconds']:.0f} s, the rest found on disk from an earlier "
        f"run; {warm['disk_mb']:.0f} MB on disk, {warm['kv_bytes_per_token'] / 1000:.1f} KB per token in the "
        "engine's dtype; `APPLIANCE_DOC_CACHE_KV_FORMAT=int8` stores 1 byte per value; the files read once before "
        "(B), so they start in the OS page cache as right after a warm); questions in a phrasing (A) never "
        f"uses; a fresh system per level ({w['segment']} requests each). Mean prompt "
        f"{w['prompt_tokens_mean']['B']:.0f} tokens.",
        "",
        *_system_table(result["B"], levels, "ttft_p50_ms"),
        "",
        *_gold_lines(result.get("G")),
        "Targets:",
        "",
        *_targets(result, levels),
        "",
        f"Fidelity against `off` on the same prompts (concurrency {levels[0]}, greedy):",
        "",
        "(A)", "", *_fidelity_table(result.get("A_fidelity", {})), "",
        "(B)", "", *_fidelity_table(result.get("B_fidelity", {})), "",
        f"Where TTFT goes (means at concurrency {levels[0]}; \"compute to first token\" = TTFT - queue - fill: "
        "the prefill or recompute step and the first sample):",
        "",
        "(A)", "", *_phase_table(result["A"], levels[0], w["retrieval_ms_p50"]["A"]), "",
        "(B)", "", *_phase_table(result["B"], levels[0], w["retrieval_ms_p50"]["B"]), "",
        *(f"**{name} failed** in this run: {why}" for name, why in result.get("failed", {}).items()),
        "",
        f"![TTFT and throughput]({PLOT.name})",
        "",
        "Machine:",
        "",
        machine_markdown(result["machine"]),
        "",
        "Reproduce: `appliance bench rag --data-dir DIR` (needs `python3.11-doc` and the `bench` extra, "
        "`make bench-extra`; `--segment 8 --systems off,blend` for a short run; `--json FILE` keeps the raw figures).",
    ]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path = PLOT) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [str(c) for c in result["workload"]["concurrency"]]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, w, stat in ((axes[0], "A", "ttft_mean_ms"), (axes[1], "B", "ttft_p50_ms")):
        names = list(result[w])
        ax.bar(names, [result[w][n][levels[0]][stat] for n in names], color="#4c72b0")
        ax.set_yscale("log")
        ax.set_title(f"({w}) TTFT {stat[5:-3]}, concurrency {levels[0]} (ms, log)")
    for w, style in (("A", "-o"), ("B", "--s")):
        for name in result[w]:
            axes[2].plot([int(c) for c in levels], [result[w][name][c]["requests_per_s"] for c in levels], style,
                         label=f"{w} {name}")
    axes[2].set_xscale("log", base=2)
    axes[2].set_xlabel("concurrency")
    axes[2].set_title("throughput (requests/s)")
    axes[2].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_rag_section(result: dict[str, Any], path: Path = Path("docs/BENCHMARKS.md")) -> None:
    """Rewrite the "RAG" section of `path` (keeping every other section) and the plot next to it."""
    from appliance.bench.report import update_section

    plot(result, path.parent / PLOT.name)
    update_section(path, "RAG", rag_markdown(result), result["machine"])
