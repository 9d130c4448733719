"""The engine bench's results: the systems' names and labels, each system's flat metrics, ours/peer ratios.

Below both the bench that measures (`bench/engine.py`) and the report that writes them (`bench/report.py`).
"""

from __future__ import annotations

from typing import Any

OURS_PREFIX = "ours-"
PEERS = ("hf", "llama-cpp")
EAGER_SUFFIX = "-eager"  # ours with eager decode layers (no compiled decode): `--dtypes bfloat16,bfloat16-eager`
COMPILED_SUFFIX = "-compiled"  # ours with torch.compile'd decode layers only (no fused layer)
LABELS = {"ours-float32": "ours float32", "ours-bfloat16": "ours bfloat16",
          "ours-float32-eager": "ours float32 eager", "ours-bfloat16-eager": "ours bfloat16 eager",
          "ours-bfloat16-compiled": "ours bfloat16 compiled (no fused layer)",
          "hf": "transformers eager f32", "llama-cpp": "llama.cpp (2 threads)"}
BUSY_CORES = 0.25  # other processes' CPU use (in cores) above which a measurement counts as disturbed


def metrics(result: dict[str, Any]) -> dict[str, float | None]:
    """A system's flat metrics: prefill_<L>, decode_<C>, peak_rss_mib."""
    flat: dict[str, float | None] = {f"prefill_{k}": v for k, v in result.get("prefill_tps", {}).items()}
    flat.update({f"decode_{k}": v for k, v in result.get("decode_tps", {}).items()})
    flat["peak_rss_mib"] = result.get("peak_rss_mib")
    return flat


def peer_value(system: str, result: dict[str, Any], metric: str) -> float | None:
    """A peer's figure for `metric`; llama.cpp's concurrent decode falls back to its single stream."""
    value = metrics(result).get(metric)
    if value is None and system == "llama-cpp" and metric.startswith("decode_"):
        value = metrics(result).get("decode_1")
    return value


def compute_ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """ours/peer for every available pair and metric (memory too: below 1 means we use less)."""
    ratios: dict[str, dict[str, float]] = {}
    for ours, res in results.items():
        if not ours.startswith(OURS_PREFIX) or not res.get("available"):
            continue
        for peer in PEERS:
            peer_res = results.get(peer, {})
            if not peer_res.get("available"):
                continue
            pair: dict[str, float] = {}
            for metric, value in metrics(res).items():
                other = peer_value(peer, peer_res, metric)
                if value is not None and other:
                    pair[metric] = value / other
            ratios[f"{ours}/{peer}"] = pair
    return ratios
