"""Sampler behaviour on real logits shapes."""

from __future__ import annotations

import pytest
import torch

from appliance.engine.sampling import Sampler, SamplingParams
from appliance.errors import RequestError


def _draw(params: SamplingParams, logits: torch.Tensor, seed: int | None, n: int = 50) -> list[int]:
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return [Sampler()(logits.clone()[None], [params], [gen], [[]])[0] for _ in range(n)]


def test_greedy_top_k_1_and_tiny_top_p_pick_the_argmax() -> None:
    logits = torch.randn(1000)
    best = int(logits.argmax())
    assert set(_draw(SamplingParams(temperature=0.0), logits, None, 3)) == {best}
    assert set(_draw(SamplingParams(temperature=1.0, top_k=1), logits, 1)) == {best}
    assert set(_draw(SamplingParams(temperature=1.0, top_p=1e-6), logits, 2)) == {best}


def test_top_k_limits_the_support_and_seed_reproduces() -> None:
    logits = torch.zeros(100)
    logits[:5] = 5.0
    draws = _draw(SamplingParams(temperature=1.0, top_k=5), logits, 7, 200)
    assert set(draws) <= set(range(5)) and len(set(draws)) > 1
    assert draws == _draw(SamplingParams(temperature=1.0, top_k=5), logits, 7, 200)


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    draws = _draw(SamplingParams(temperature=1.0, top_p=0.7), logits, 3, 300)
    assert set(draws) == {0, 1}


@pytest.mark.parametrize("bad", [dict(max_tokens=0), dict(temperature=-1.0), dict(top_p=0.0), dict(top_k=-2),
                                 dict(stop=("",))])
def test_invalid_parameters_are_rejected(bad: dict) -> None:
    with pytest.raises(RequestError):
        SamplingParams(**bad)
