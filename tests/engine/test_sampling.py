"""The batched sampler against a per-row reference: greedy exactly, draws in distribution, seeds reproducible."""

from __future__ import annotations

import pytest
import torch

from appliance.engine.sampler import Sampler
from appliance.engine.sampling import SamplingParams
from appliance.engine.seeded_noise import exponential_noise
from appliance.errors import RequestError


def reference_probs(row: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """One row at a time, the plain way: temperature, then top-k, then top-p. row: [V] -> probabilities [V]."""
    row = row / p.temperature
    if p.top_k and p.top_k < row.shape[0]:
        kth = torch.topk(row, p.top_k).values[-1]
        row = row.masked_fill(row < kth, float("-inf"))
    probs = torch.softmax(row, dim=-1)
    if p.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        drop = sorted_probs.cumsum(0) - sorted_probs > p.top_p  # keep the smallest prefix whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs.masked_fill(drop, 0.0))
    return probs / probs.sum()


def draw(logits: torch.Tensor, params: list[SamplingParams], steps: list[int] | None = None) -> list[int]:
    histories = [[0] * s for s in (steps or [0] * len(params))]
    return Sampler()(logits.clone(), params, histories).tokens.tolist()


SETTINGS = [SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_k=5),
            SamplingParams(temperature=1.0, top_p=0.8), SamplingParams(temperature=1.3, top_k=20, top_p=0.9)]


@pytest.mark.parametrize("params", SETTINGS, ids=["plain", "top_k", "top_p", "all"])
@pytest.mark.parametrize("seeded", [False, True], ids=["unseeded", "seeded"])
def test_draws_follow_the_reference_distribution(params: SamplingParams, seeded: bool) -> None:
    torch.manual_seed(0)
    logits = torch.randn(64) * 2  # [V]
    n = 20_000
    if seeded:  # fixed draws: seeds 0..n-1
        rows = [SamplingParams(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p, seed=seed)
                for seed in range(n)]
    else:
        rows = [params] * n
    plain = SamplingParams(temperature=1.0)  # every other row: a neighbour that truncates nothing
    batch = [row for pair in zip(rows, [plain] * n, strict=True) for row in pair]
    tokens = draw(logits.expand(2 * n, -1), batch)[::2]
    expected = reference_probs(logits, params)
    observed = torch.bincount(torch.tensor(tokens), minlength=64).float() / n
    assert set(tokens) <= set(expected.nonzero().flatten().tolist())  # never outside the reference's support
    assert 0.5 * (observed - expected).abs().sum() < 0.03  # total variation; the sampling noise is ~0.015


def test_top_p_reaches_past_the_first_candidates_when_they_hold_too_little() -> None:
    logits = -torch.arange(5000.0) * 1e-4  # nearly flat: top_p=0.9 keeps the first ~4,600 tokens
    keep = int((reference_probs(logits, SamplingParams(top_p=0.9)) > 0).sum())
    tokens = draw(logits.expand(4000, -1), [SamplingParams(top_p=0.9)] * 4000)
    assert 4000 < keep < 5000 and max(tokens) < keep and max(tokens) > 2000


def test_greedy_rows_are_the_argmax_exactly_beside_drawn_rows() -> None:
    logits = torch.randn(6, 1000)
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=1.0, top_k=3),
              SamplingParams(temperature=0.0), SamplingParams(temperature=0.9, top_p=0.5, seed=4),
              SamplingParams(temperature=0.0), SamplingParams(temperature=1.0, top_k=1)]
    tokens = draw(logits, params)
    best = logits.argmax(dim=-1).tolist()
    assert [tokens[i] for i in (0, 2, 4, 5)] == [best[i] for i in (0, 2, 4, 5)]  # top_k=1 is the argmax too


@pytest.mark.parametrize("top_p", [1.0, 0.95])
def test_a_seeded_draw_depends_on_seed_and_position_only(top_p: float) -> None:
    torch.manual_seed(1)
    logits = torch.randn(200)
    seeded = SamplingParams(temperature=1.0, top_p=top_p, seed=123)
    alone = [draw(logits[None], [seeded], [step])[0] for step in range(40)]
    neighbours = [SamplingParams(temperature=0.5, top_k=7), SamplingParams(temperature=2.0)]  # other widths
    in_batch = [draw(torch.stack([torch.randn(200), logits, torch.randn(200)]), [neighbours[0], seeded,
                     neighbours[1]], [5, step, 9])[1] for step in range(40)]
    assert in_batch == alone and len(set(alone)) > 5
    other_seed = SamplingParams(temperature=1.0, top_p=top_p, seed=124)
    assert [draw(logits[None], [other_seed], [step])[0] for step in range(40)] != alone


def test_seeded_noise_is_exponential_and_fixed_by_its_key() -> None:
    ids = torch.arange(50_000).expand(2, -1)
    noise = exponential_noise([7, 2**63 - 1], [0, 3], ids)
    assert noise.dtype == torch.float32 and bool((noise > 0).all())
    assert abs(noise.mean().item() - 1.0) < 0.02 and abs(noise.var().item() - 1.0) < 0.05
    assert torch.equal(noise, exponential_noise([7, 2**63 - 1], [0, 3], ids))
    assert not torch.equal(noise[0], exponential_noise([7], [1], ids[:1])[0])


def test_logits_processors_apply_before_the_choice() -> None:
    logits = torch.zeros(1, 10)

    def only_seven(history: list[int], row: torch.Tensor) -> torch.Tensor:
        return torch.full_like(row, float("-inf")).index_fill(0, torch.tensor([7]), 0.0)

    for temperature in (0.0, 1.0):
        assert draw(logits, [SamplingParams(temperature=temperature, logits_processors=(only_seven,))]) == [7]


@pytest.mark.parametrize("bad", [dict(max_tokens=0), dict(temperature=-1.0), dict(top_p=0.0), dict(top_k=-2),
                                 dict(stop=("",))])
def test_invalid_parameters_are_rejected(bad: dict) -> None:
    with pytest.raises(RequestError):
        SamplingParams(**bad)
