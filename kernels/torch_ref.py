"""The `torch` attention backend: the CPU production path and the reference for the GPU backends.

Per step, sequences are sorted into three groups so each uses the cheapest exact computation:
  * fresh prefills (no cached context): causal SDPA over the new tokens, no cache read;
  * single-token queries (decode): one batched SDPA over keys gathered from the paged cache;
  * chunks continuing a cached context: attention over the gathered keys with a true-position mask. The
    positions of a chunk's queries need not be contiguous: the document cache recomputes a chosen, sparse
    set of tokens, each seeing exactly the keys at or before its own position (a custom mask).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from kernels.base import AttentionBackend, AttentionBatch


@dataclass
class TorchPlan:
    slot_mapping: torch.Tensor  # [T]
    fresh: list[tuple[int, int]] = field(default_factory=list)  # token ranges [start, end)
    decode_rows: torch.Tensor | None = None  # [Bd] token index of each single-token query
    decode_slots: torch.Tensor | None = None  # [Bd, L] cache slots of each sequence's keys (padded)
    decode_bias: torch.Tensor | None = None  # [Bd, 1, 1, L] float32: 0 where the key is visible, -inf elsewhere
    decode_lens: torch.Tensor | None = None  # [Bd] int64: keys each single-token query sees (its slots' prefix)
    chunks: list[tuple[int, int, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    # (start, end, slots [L], mask [q, L])


def sequence_slots(block_table: torch.Tensor, length: int, block_size: int) -> torch.Tensor:
    """Cache slots of tokens 0..length-1 of one sequence. block_table: [max_blocks] -> [length]."""
    idx = torch.arange(length, device=block_table.device)
    return block_table[idx // block_size] * block_size + idx % block_size


class TorchAttention(AttentionBackend):
    name = "torch"

    def plan(self, batch: AttentionBatch) -> TorchPlan:
        plan = TorchPlan(slot_mapping=batch.slot_mapping)
        device = batch.positions.device  # the plan's tensors live with the batch's (CPU or CUDA)
        decode: list[int] = []
        for i in range(batch.num_seqs):
            start, end = batch.query_start_loc[i], batch.query_start_loc[i + 1]
            q_len, seq_len = end - start, batch.seq_lens[i]
            if q_len == seq_len:
                plan.fresh.append((start, end))
            elif q_len == 1:
                decode.append(i)
            else:
                slots = sequence_slots(batch.block_tables[i], seq_len, batch.block_size)
                mask = torch.arange(seq_len, device=device)[None, :] <= batch.positions[start:end, None]
                plan.chunks.append((start, end, slots, mask))
        if decode:
            max_len = max(batch.seq_lens[i] for i in decode)
            lens = torch.tensor([batch.seq_lens[i] for i in decode], device=device)
            idx = torch.arange(max_len, device=device)
            tables = batch.block_tables[decode]  # [Bd, max_blocks]
            plan.decode_slots = tables.gather(1, (idx // batch.block_size).expand(len(decode), -1)) \
                * batch.block_size + idx % batch.block_size  # [Bd, L]
            hidden = idx[None, :] >= lens[:, None]
            bias = torch.zeros(hidden.shape, device=device).masked_fill(hidden, float("-inf"))  # [Bd, L]
            plan.decode_bias = bias[:, None, None, :]
            plan.decode_lens = lens
            plan.decode_rows = torch.tensor([batch.query_start_loc[i] for i in decode], device=device)
        return plan

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, plan: TorchPlan) -> torch.Tensor:
        num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
        k_flat = k_cache.view(-1, num_kv_heads, head_dim)  # [num_blocks * block_size, KVH, D]
        v_flat = v_cache.view(-1, num_kv_heads, head_dim)
        k_flat.index_copy_(0, plan.slot_mapping, k.to(k_flat.dtype))
        v_flat.index_copy_(0, plan.slot_mapping, v.to(v_flat.dtype))
        out = torch.empty_like(q)
        low_precision = q.dtype != torch.float32
        for start, end in plan.fresh:
            if low_precision and end - start > _BLOCK:
                rows = torch.arange(end - start, device=q.device)
                out[start:end] = _blocked_attention(q[start:end], k[start:end], v[start:end],
                                                    rows[None, :] <= rows[:, None], list(range(1, end - start + 1)))
            else:
                out[start:end] = _sdpa(q[start:end], k[start:end], v[start:end], None, causal=True)
        for start, end, slots, mask in plan.chunks:  # a masked SDPA in bf16 falls back to its slow math kernel
            if low_precision:
                out[start:end] = _blocked_attention(q[start:end], k_flat[slots], v_flat[slots], mask)
            else:
                out[start:end] = _sdpa(q[start:end], k_flat[slots], v_flat[slots], mask, causal=False)
        if plan.decode_rows is not None:
            out[plan.decode_rows] = _decode_attention(q[plan.decode_rows], k_flat, v_flat, plan)
        return out


def _decode_attention(q: torch.Tensor, k_flat: torch.Tensor, v_flat: torch.Tensor, plan: TorchPlan) -> torch.Tensor:
    """Single-token queries, batched. q: [Bd, H, D] -> [Bd, H, D].

    Written as two grouped matmuls with a float32 softmax: the query heads sharing a KV head are stacked,
    so keys are never repeated; on CPU this is several times faster than SDPA for one query row in bf16.
    """
    bd, heads, dim = q.shape
    kv_heads = k_flat.shape[1]
    slots = plan.decode_slots  # [Bd, L]
    assert slots is not None and plan.decode_bias is not None
    # Small problems run faster in float32 on CPU (bf16 matmul setup dominates); large ones in q's dtype.
    dtype = torch.float32 if slots.numel() <= _SMALL_DECODE else q.dtype
    qg = q.view(bd, kv_heads, heads // kv_heads, dim).to(dtype)  # [Bd, KVH, G, D]
    k = k_flat[slots].permute(0, 2, 3, 1).to(dtype)  # [Bd, KVH, D, L]
    v = v_flat[slots].transpose(1, 2).to(dtype)  # [Bd, KVH, L, D]
    scores = torch.matmul(qg, k).float() * dim ** -0.5 + plan.decode_bias  # [Bd, KVH, G, L]
    return torch.matmul(scores.softmax(-1).to(dtype), v).view(bd, heads, dim).to(q.dtype)


_BLOCK = 256  # query rows per block in `_blocked_attention`
_SMALL_DECODE = 4096  # decode batches with at most this many (sequence, key) pairs compute in float32


def _blocked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor,
                       seen: list[int] | None = None) -> torch.Tensor:
    """Attention of a chunk of queries over keys under a mask (`visible[i, j]`: query i may see key j; `seen[i]`
    the number of keys it sees, read from the mask when not given: a wait on the device).

    q: [Q, H, D]; k/v: [L, KVH, D]; visible: [Q, L] bool -> [Q, H, D]. Blocks of query rows against the keys
    up to the last one the block can see, as bf16 batched matmuls (the query heads of one KV head stacked)
    and a softmax that accumulates in float32: on CPU, bf16 GEMMs run several times faster than SDPA's bf16
    kernel for long prompts. Each row sees a prefix of the keys, so a block needs the keys up to its longest
    row's and masks only the columns past its shortest row's.
    """
    n, heads, dim = q.shape
    kv_heads = k.shape[1]
    group = heads // kv_heads
    q = (q.float() * dim ** -0.5).to(q.dtype)  # scaled here, not on the [rows, keys] scores
    qg = q.view(n, kv_heads, group, dim).permute(1, 2, 0, 3)  # [KVH, G, Q, D]
    kt = k.permute(1, 2, 0)  # [KVH, D, L]
    vt = v.transpose(0, 1)  # [KVH, L, D]
    out = torch.empty_like(q)
    if seen is None:
        seen = visible.sum(-1).tolist()  # keys each row sees (a prefix)
    for start in range(0, n, _BLOCK):
        end = min(start + _BLOCK, n)
        rows, keys, common = end - start, max(seen[start:end]), min(seen[start:end])
        scores = torch.bmm(qg[:, :, start:end].reshape(kv_heads, group * rows, dim), kt[:, :, :keys])
        scores = scores.view(kv_heads, group, rows, keys)  # [KVH, G, rows, keys] in q's dtype
        scores[..., common:].masked_fill_(~visible[start:end, common:keys], float("-inf"))
        probs = scores.softmax(-1)  # accumulates in float32 internally: no conversion passes over the scores
        block = torch.bmm(probs.view(kv_heads, group * rows, keys), vt[:, :keys])  # [KVH, G*rows, D]
        out[start:end] = block.view(kv_heads, group, rows, dim).permute(2, 0, 1, 3).reshape(rows, heads, dim)
    return out


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool
          ) -> torch.Tensor:
    """One sequence. q: [Q, H, D], k/v: [L, KVH, D], mask: [Q, L] bool or None -> [Q, H, D]."""
    o = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1).to(q.dtype), v.transpose(0, 1).to(q.dtype),
                                       attn_mask=mask, is_causal=causal, enable_gqa=True)
    return o.transpose(0, 1)
