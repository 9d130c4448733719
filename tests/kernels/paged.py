"""Random paged-attention batches shared by the backend tests."""

from __future__ import annotations

import random

import torch

from kernels.base import AttentionBatch


def make_batch(shapes: list[tuple[int, int]], block_size: int, kv_heads: int, dim: int, dtype: torch.dtype,
               gen: torch.Generator, rng: random.Random) -> tuple[AttentionBatch, torch.Tensor, torch.Tensor]:
    """A batch of sequences (cached context, new tokens) with shuffled blocks; returns (batch, k_cache, v_cache).

    The caches hold random context keys/values (and garbage everywhere else)."""
    num_blocks = sum(-(-(ctx + new) // block_size) for ctx, new in shapes) + 4
    k_cache = torch.randn(num_blocks, block_size, kv_heads, dim, generator=gen).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, kv_heads, dim, generator=gen).to(dtype)
    free = list(range(num_blocks))
    rng.shuffle(free)
    tables, starts, seq_lens, positions, slots = [], [0], [], [], []
    for ctx, new in shapes:
        table = [free.pop() for _ in range(-(-(ctx + new) // block_size))]
        tables.append(table)
        positions.extend(range(ctx, ctx + new))
        slots.extend(table[p // block_size] * block_size + p % block_size for p in range(ctx, ctx + new))
        starts.append(starts[-1] + new)
        seq_lens.append(ctx + new)
    block_tables = pad_block_tables(tables)
    batch = AttentionBatch(starts, seq_lens, torch.tensor(positions), torch.tensor(slots), block_tables, block_size)
    return batch, k_cache, v_cache


def pad_block_tables(tables: list[list[int]]) -> torch.Tensor:
    """Block tables of different lengths -> [B, max_blocks] int64, padded with 0."""
    out = torch.zeros(len(tables), max(len(t) for t in tables), dtype=torch.int64)
    for i, t in enumerate(tables):
        out[i, :len(t)] = torch.tensor(t)
    return out
