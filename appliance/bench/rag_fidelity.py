"""Summaries of one benchmark level, and how close a system's answers are to full prefill's (`off`)."""

from __future__ import annotations

import re
from collections import Counter
from statistics import mean
from typing import TYPE_CHECKING

import numpy as np

from appliance.bench.rag_systems import Completion

if TYPE_CHECKING:
    from appliance.engine.tokenizer import TextTokenizer

_MARKER = re.compile(r"\[(\d+)\]")


def level_summary(done: list[Completion], wall_s: float) -> dict[str, float]:
    """TTFT percentiles and mean (ms), throughput, and the mean of each phase the system reports."""
    ttft = [c.ttft_s * 1000 for c in done]
    out = {"requests": len(done), "wall_s": round(wall_s, 2), "ttft_p50_ms": float(np.percentile(ttft, 50)),
           "ttft_p99_ms": float(np.percentile(ttft, 99)), "ttft_mean_ms": float(np.mean(ttft)),
           "requests_per_s": len(done) / wall_s}
    for key in done[0].phases:
        out[key + "_mean"] = mean(c.phases[key] for c in done)
    return out


def token_f1(reference: list[int], candidate: list[int]) -> float:
    """F1 of the two answers' token multisets (1.0 when both are empty)."""
    if not reference and not candidate:
        return 1.0
    overlap = sum((Counter(reference) & Counter(candidate)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(candidate), overlap / len(reference)
    return 2 * precision * recall / (precision + recall)


def fidelity(reference: list[Completion], candidate: list[Completion], tokenizer: TextTokenizer
             ) -> dict[str, float]:
    """First-token agreement, mean token F1 and same-citations share of `candidate` against `reference`,
    prompt by prompt (systems that only return text are re-tokenized)."""

    def tokens(c: Completion) -> list[int]:
        return c.token_ids or tokenizer.encode(c.text)

    pairs = list(zip(reference, candidate, strict=True))
    first = [bool(tokens(r)[:1] == tokens(c)[:1]) for r, c in pairs]
    f1 = [token_f1(tokens(r), tokens(c)) for r, c in pairs]
    cites = [set(_MARKER.findall(r.text)) == set(_MARKER.findall(c.text)) for r, c in pairs]
    return {"answers": len(pairs), "first_token_agreement": mean(first), "token_f1": mean(f1),
            "same_citations": mean(cites), "exact_match": mean(tokens(r) == tokens(c) for r, c in pairs)}
