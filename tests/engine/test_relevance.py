"""Query-aware selection's scorer against a naive reference, on random tensors."""

from __future__ import annotations

import math

import pytest
import torch

from appliance.engine.doc_cache.relevance import question_attention


def naive_question_attention(q: torch.Tensor, context_k: torch.Tensor, own_k: torch.Tensor, scale: float
                             ) -> torch.Tensor:
    """One query and head at a time: softmax over the context keys and the question's keys up to itself."""
    n_q, heads, _ = q.shape
    n_ctx, kv_heads = context_k.shape[:2]
    mass = torch.zeros(n_ctx, dtype=torch.float64)
    for i in range(n_q):
        for h in range(heads):
            g = h // (heads // kv_heads)
            keys = torch.cat([context_k[:, g], own_k[:i + 1, g]]).double()  # [P + i + 1, D]
            weights = [math.exp(float(q[i, h].double() @ key) * scale) for key in keys]
            total = sum(weights)
            mass += torch.tensor(weights[:n_ctx], dtype=torch.float64) / total
    return (mass / (n_q * heads)).float()


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (6, 2), (3, 1)])
def test_question_attention_matches_the_naive_reference(heads: int, kv_heads: int) -> None:
    gen = torch.Generator().manual_seed(heads * 10 + kv_heads)
    n_q, n_ctx, dim = 5, 23, 8
    q = torch.randn(n_q, heads, dim, generator=gen)
    context_k = torch.randn(n_ctx, kv_heads, dim, generator=gen)
    own_k = torch.randn(n_q, kv_heads, dim, generator=gen) * 2  # strong self-attention: the causal part matters
    got = question_attention(q, context_k, own_k, dim ** -0.5)
    expected = naive_question_attention(q, context_k, own_k, dim ** -0.5)
    assert got.shape == (n_ctx,)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    assert float(got.sum()) < 1.0  # some mass stays on the question itself


def test_a_query_pointing_at_one_key_gives_it_the_mass() -> None:
    dim = 4
    context_k = torch.zeros(6, 1, dim)
    context_k[3, 0, 0] = 1.0
    q = torch.zeros(2, 2, dim)
    q[:, :, 0] = 40.0  # both heads of both queries look at key 3
    got = question_attention(q, context_k, torch.zeros(2, 1, dim), 1.0)
    assert int(got.argmax()) == 3 and float(got[3]) > 0.99
