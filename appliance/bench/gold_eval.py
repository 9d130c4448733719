"""Judging answers against gold answers: accuracy, and its ratio to full prefill's with a paired bootstrap
95% interval (the same questions resampled for both, so the interval reflects per-question agreement)."""

from __future__ import annotations

import random
from statistics import mean

from appliance.evaluation.gold_answer import is_right

BOOTSTRAP_SAMPLES = 2000


def right_answers(answers: list[str], golds: list[str]) -> list[bool]:
    return [is_right(answer, gold) for answer, gold in zip(answers, golds, strict=True)]


def accuracy_ratio(reference: list[bool], candidate: list[bool], samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
                   ) -> dict[str, float]:
    """Accuracy of `candidate` over `reference`'s on the same questions: the ratio and the 2.5th and 97.5th
    percentiles of the ratio over `samples` resamplings of the questions (resamples where the reference gets
    nothing right are skipped); also the share of questions with the same verdict."""
    assert len(reference) == len(candidate) and reference
    rng = random.Random(seed)
    n = len(reference)
    ratios = []
    for _ in range(samples):
        picks = [rng.randrange(n) for _ in range(n)]
        ref = sum(reference[i] for i in picks)
        if ref:
            ratios.append(sum(candidate[i] for i in picks) / ref)
    ratios.sort()
    ref_right = sum(reference)
    return {"accuracy": mean(candidate),
            "ratio": sum(candidate) / ref_right if ref_right else float("nan"),
            "ratio_low": ratios[int(0.025 * len(ratios))] if ratios else float("nan"),
            "ratio_high": ratios[min(len(ratios) - 1, int(0.975 * len(ratios)))] if ratios else float("nan"),
            "same_verdict": mean(r == c for r, c in zip(reference, candidate, strict=True))}
