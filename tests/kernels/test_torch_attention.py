"""The torch attention backend against a naive float64 reference on fresh random inputs."""

from __future__ import annotations

import random

import pytest
import torch

from kernels.base import AttentionBatch, get_backend
from tests.kernels.paged import pad_block_tables


def naive_attention(q, k_all, v_all, positions):
    """q: [Q, H, D]; k_all/v_all: [L, KVH, D] (the whole sequence); float64 softmax(QK^T)V with j <= pos."""
    q, k_all, v_all = q.double(), k_all.double(), v_all.double()
    group = q.shape[1] // k_all.shape[1]
    k = k_all.repeat_interleave(group, dim=1)  # [L, H, D]
    v = v_all.repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,lhd->hql", q, k) / q.shape[-1] ** 0.5
    visible = torch.arange(k.shape[0])[None, :] <= positions[:, None]  # [Q, L]
    scores = scores.masked_fill(~visible[None], float("-inf"))
    return torch.einsum("hql,lhd->qhd", scores.softmax(-1), v)


CASES = [(block_size, heads, kv_heads, seed, torch.float32, 30) for block_size in (1, 4, 16)
         for heads, kv_heads in ((4, 4), (6, 2), (8, 1)) for seed in (0, 1)]
# bfloat16 takes the blocked-matmul path for continued chunks: longer than one 256-row block, and short ones
CASES += [(16, 6, 2, seed, torch.bfloat16, max_new) for seed in (0, 1) for max_new in (600, 40)]


@pytest.mark.parametrize("block_size,heads,kv_heads,seed,dtype,max_new", CASES)
def test_ragged_batch_matches_reference(block_size: int, heads: int, kv_heads: int, seed: int, dtype: torch.dtype,
                                        max_new: int) -> None:
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    d = 32
    num_blocks = 4 * (max_new + 64) // block_size + 8
    backend = get_backend("torch", torch.device("cpu"))
    k_cache = torch.randn(num_blocks, block_size, kv_heads, d, generator=gen).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, kv_heads, d, generator=gen).to(dtype)
    free = list(range(num_blocks))
    rng.shuffle(free)
    # (context already cached, new tokens): decodes, a fresh prefill, a continued chunk
    long = (max(2, max_new // 2), max_new)
    shapes = [(rng.randint(1, 40), 1), (0, rng.randint(*long)), (rng.randint(1, 25), rng.randint(*long)),
              (rng.randint(1, 60), 1)]
    rng.shuffle(shapes)
    tables, starts, seq_lens, positions, slots, full_k, full_v = [], [0], [], [], [], [], []
    for ctx, new in shapes:
        n_blocks = -(-(ctx + new) // block_size)
        table = [free.pop() for _ in range(n_blocks)]
        tables.append(table)
        seq_slots = [table[p // block_size] * block_size + p % block_size for p in range(ctx + new)]
        k_seq = torch.randn(ctx + new, kv_heads, d, generator=gen).to(dtype)
        v_seq = torch.randn(ctx + new, kv_heads, d, generator=gen).to(dtype)
        flat_k, flat_v = k_cache.view(-1, kv_heads, d), v_cache.view(-1, kv_heads, d)
        flat_k[seq_slots[:ctx]] = k_seq[:ctx]
        flat_v[seq_slots[:ctx]] = v_seq[:ctx]
        full_k.append(k_seq)
        full_v.append(v_seq)
        positions.extend(range(ctx, ctx + new))
        slots.extend(seq_slots[ctx:])
        starts.append(starts[-1] + new)
        seq_lens.append(ctx + new)
    block_tables = pad_block_tables(tables)
    batch = AttentionBatch(starts, seq_lens, torch.tensor(positions), torch.tensor(slots), block_tables, block_size)
    total = starts[-1]
    q = torch.randn(total, heads, d, generator=gen).to(dtype)
    k_new = torch.cat([k[ctx:] for k, (ctx, _) in zip(full_k, shapes, strict=True)])
    v_new = torch.cat([v[ctx:] for v, (ctx, _) in zip(full_v, shapes, strict=True)])
    out = backend.forward(q, k_new, v_new, k_cache, v_cache, backend.plan(batch))
    for i in range(len(shapes)):
        s, e = starts[i], starts[i + 1]
        expected = naive_attention(q[s:e], full_k[i], full_v[i], batch.positions[s:e])
        tol = dict(atol=2e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
        torch.testing.assert_close(out[s:e].double(), expected, **tol)
    # the new tokens were written where the block table says
    flat_k = k_cache.view(-1, kv_heads, d)
    torch.testing.assert_close(flat_k[batch.slot_mapping], k_new)


@pytest.mark.parametrize("dtype,length,share,seed", [(torch.float32, 90, 0.3, 0), (torch.float32, 64, 1.0, 1),
                                                      (torch.bfloat16, 1500, 0.4, 2)])
def test_sparse_positions_see_exactly_the_keys_at_or_before_them(dtype: torch.dtype, length: int, share: float,
                                                                 seed: int) -> None:
    """The document cache recomputes a scattered set of tokens inside an already filled sequence: each must
    attend to every key up to its own true position (the reused ones and the recomputed ones), no further."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    block_size, heads, kv_heads, d = 16, 6, 2, 32
    num_blocks = length // block_size + 4
    k_cache = torch.randn(num_blocks, block_size, kv_heads, d, generator=gen).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, kv_heads, d, generator=gen).to(dtype)
    table = list(range(num_blocks))
    rng.shuffle(table)
    chosen = sorted(rng.sample(range(1, length - 1), int((length - 2) * share))) + [length - 1]
    slots = torch.tensor([table[p // block_size] * block_size + p % block_size for p in chosen])
    q = torch.randn(len(chosen), heads, d, generator=gen).to(dtype)
    k_new = torch.randn(len(chosen), kv_heads, d, generator=gen).to(dtype)
    v_new = torch.randn(len(chosen), kv_heads, d, generator=gen).to(dtype)
    batch = AttentionBatch([0, len(chosen)], [length], torch.tensor(chosen), slots, torch.tensor([table]), block_size)
    backend = get_backend("torch", torch.device("cpu"))
    out = backend.forward(q, k_new, v_new, k_cache, v_cache, backend.plan(batch))
    seq_slots = [table[p // block_size] * block_size + p % block_size for p in range(length)]
    k_all = k_cache.view(-1, kv_heads, d)[seq_slots]  # the recomputed keys are in place by now
    v_all = v_cache.view(-1, kv_heads, d)[seq_slots]
    torch.testing.assert_close(k_all[chosen], k_new)
    expected = naive_attention(q, k_all, v_all, torch.tensor(chosen))
    tol = dict(atol=2e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(out.double(), expected, **tol)


def test_unknown_backend_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown attention backend"):
        get_backend("nope", torch.device("cpu"))
