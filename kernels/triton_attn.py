"""The `triton` attention backend: paged attention and the document cache's RoPE re-rotation for GPUs.

Per layer, two launches serve the whole step: one writes the new tokens' K/V into the paged cache, one
attends for every query token of every sequence (prefill chunks and decode tokens alike). A program of the
attention kernel takes a tile of consecutive query tokens of one sequence and one KV head; the query heads
that share that KV head are stacked as rows, so each key block is read once per tile (grouped-query heads).
Keys are read through the block table and visible iff `key index <= the query's true position`, so chunks
with scattered positions (the document cache's selective recompute) need no special path.

Triton is imported on first use only. On CPU the kernels run under `TRITON_INTERPRET=1` (the tests do so).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch

from kernels.base import AttentionBackend, AttentionBatch

BLOCK_N = 32  # keys per inner-loop step
DECODE_ROWS = 16  # query rows per program when every sequence has one query token (tl.dot needs >= 16)
PREFILL_ROWS = 64  # query rows per program otherwise
LOG2E = 1.4426950408889634


def _pow2(n: int) -> int:
    """Smallest power of two >= n (n >= 1)."""
    return 1 << (n - 1).bit_length()


@dataclass
class TritonPlan:
    """One step's launch geometry. `tiles` is built on the first layer, once the head counts are known."""

    positions: torch.Tensor  # [T] int64
    slot_mapping: torch.Tensor  # [T] int64
    block_tables: torch.Tensor  # [B, max_blocks] int64
    query_start_loc: list[int]  # [B+1]
    block_size: int
    rows: int  # DECODE_ROWS or PREFILL_ROWS
    tiles: dict[int, torch.Tensor] = field(default_factory=dict)  # tokens per tile -> [3, NT] int64

    def tiles_for(self, tokens_per_tile: int) -> torch.Tensor:
        """[3, NT]: each tile's sequence, its first token and the end of its sequence's tokens (flat batch)."""
        if tokens_per_tile not in self.tiles:
            seqs, firsts, ends = [], [], []
            for i in range(len(self.query_start_loc) - 1):
                start, end = self.query_start_loc[i], self.query_start_loc[i + 1]
                for first in range(start, end, tokens_per_tile):
                    seqs.append(i)
                    firsts.append(first)
                    ends.append(end)
            self.tiles[tokens_per_tile] = torch.tensor([seqs, firsts, ends], dtype=torch.int64,
                                                       device=self.positions.device)
        return self.tiles[tokens_per_tile]


class TritonAttention(AttentionBackend):
    name = "triton"

    def plan(self, batch: AttentionBatch) -> TritonPlan:
        starts = batch.query_start_loc
        decode_only = all(starts[i + 1] - starts[i] == 1 for i in range(batch.num_seqs))
        return TritonPlan(positions=batch.positions.contiguous(), slot_mapping=batch.slot_mapping.contiguous(),
                          block_tables=batch.block_tables.contiguous(), query_start_loc=list(starts),
                          block_size=batch.block_size, rows=DECODE_ROWS if decode_only else PREFILL_ROWS)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, plan: TritonPlan) -> torch.Tensor:
        _write_kv(k_cache, v_cache, k, v, plan.slot_mapping, None, None)
        q = q if q.stride(-1) == 1 else q.contiguous()
        tokens, heads, dim = q.shape
        kv_heads = k_cache.shape[2]
        group = heads // kv_heads
        group_p2 = _pow2(group)
        rows = max(plan.rows, group_p2)
        tiles = plan.tiles_for(rows // group_p2)
        num_tiles = tiles.shape[1]
        out = torch.empty((tokens, heads, dim), dtype=q.dtype, device=q.device)
        if tokens == 0:
            return out
        _check_cache(k_cache, v_cache)
        attend, _ = _kernels()
        attend[(num_tiles, kv_heads)](
            q, k_cache, v_cache, out, plan.positions, plan.block_tables, tiles, num_tiles,
            q.stride(0), q.stride(1), out.stride(0), out.stride(1), k_cache.stride(1), k_cache.stride(2),
            plan.block_tables.stride(0), dim ** -0.5 * LOG2E,
            HEAD_DIM=dim, D_P2=max(16, _pow2(dim)), GROUP=group, GROUP_P2=group_p2, ROWS=rows,
            BLOCK_SIZE=plan.block_size, BLOCK_N=BLOCK_N,
            PRECISION="ieee" if q.dtype == torch.float32 else "tf32", UPCAST=q.device.type == "cpu",
        )
        return out

    def write_rotated(self, k_cache: torch.Tensor, v_cache: torch.Tensor, k_pre: torch.Tensor, v: torch.Tensor,
                      slots: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
        write_rotated(k_cache, v_cache, k_pre, v, slots, cos, sin)


def write_rotated(k_cache: torch.Tensor, v_cache: torch.Tensor, k_pre: torch.Tensor, v: torch.Tensor,
                  slots: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """`kernels.rope.write_rotated` in one launch: keys rotated to their target positions, values as they are.

    k_cache/v_cache: [num_blocks, block_size, KVH, D]; k_pre/v: [T, KVH, D] (keys before RoPE);
    slots: [T] int64 flat cache slots; cos/sin: [T, 1, D] tables of the target positions (halves duplicated).
    The rotation is computed in float32 and rounded once to the cache's dtype.
    """
    _write_kv(k_cache, v_cache, k_pre, v, slots, cos, sin)


def _check_cache(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    """The kernels address a slot as `slot * stride(1)`: blocks must be contiguous, K and V alike."""
    if not (k_cache.is_contiguous() and v_cache.is_contiguous() and k_cache.shape == v_cache.shape):
        raise ValueError("the triton backend needs contiguous K/V caches of one shape")


def _write_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor,
              cos: torch.Tensor | None, sin: torch.Tensor | None) -> None:
    """Write k/v [T, KVH, D] at `slots` [T]; rotate the keys first when cos/sin [T, 1, D] are given."""
    tokens = k.shape[0]
    if tokens == 0:
        return
    _check_cache(k_cache, v_cache)
    k = k if k.stride(-1) == 1 else k.contiguous()
    v = v if v.stride(-1) == 1 else v.contiguous()
    kv_heads, dim = k_cache.shape[2], k_cache.shape[3]
    rotate = cos is not None and sin is not None
    cos_t = cos if cos is not None else k  # unused when not rotating
    sin_t = sin if sin is not None else k
    if rotate and (cos_t.stride(-1) != 1 or sin_t.stride(-1) != 1 or cos_t.stride(0) != sin_t.stride(0)):
        raise ValueError("cos/sin must share one layout with a contiguous last dimension")
    _, write = _kernels()
    write[(tokens,)](
        k, v, slots.contiguous(), k_cache, v_cache, cos_t, sin_t,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1), k_cache.stride(1), k_cache.stride(2), cos_t.stride(0),
        KV_HEADS=kv_heads, HALF=dim // 2, H_P2=_pow2(kv_heads), HALF_P2=_pow2(dim // 2), ROTATE=rotate,
    )


@functools.cache
def _kernels() -> tuple[Any, Any]:
    """Compile-on-demand kernels (imports triton; never called on a CPU-only run of the engine)."""
    import triton
    import triton.language as tl

    @triton.jit
    def attend(q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, positions_ptr, block_tables_ptr, tiles_ptr, num_tiles,
               stride_qt, stride_qh, stride_ot, stride_oh, stride_slot, stride_ch, stride_bt, scale_log2,
               HEAD_DIM: tl.constexpr, D_P2: tl.constexpr, GROUP: tl.constexpr, GROUP_P2: tl.constexpr,
               ROWS: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
               UPCAST: tl.constexpr):
        tile = tl.program_id(0)
        kv_head = tl.program_id(1)
        seq = tl.load(tiles_ptr + tile)
        first = tl.load(tiles_ptr + num_tiles + tile)
        end = tl.load(tiles_ptr + 2 * num_tiles + tile)
        r = tl.arange(0, ROWS)  # row r: token first + r // GROUP_P2, query head kv_head * GROUP + r % GROUP_P2
        tok = first + r // GROUP_P2
        head = kv_head * GROUP + r % GROUP_P2
        row_ok = (tok < end) & (r % GROUP_P2 < GROUP)
        d = tl.arange(0, D_P2)
        d_ok = d < HEAD_DIM
        q = tl.load(q_ptr + tok[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :],
                    mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # [ROWS, D_P2]
        if UPCAST:  # CPU interpreter: its tl.dot multiplies bfloat16 operands as raw integers
            q = q.to(tl.float32)
        pos = tl.load(positions_ptr + tok, mask=row_ok, other=-1)  # [ROWS]
        num_keys = tl.max(pos) + 1  # keys past the tile's last position are visible to none of its rows
        m_i = tl.full([ROWS], -1.0e30, tl.float32)
        l_i = tl.zeros([ROWS], tl.float32)
        acc = tl.zeros([ROWS, D_P2], tl.float32)
        table = block_tables_ptr + seq * stride_bt
        for start in range(0, num_keys, BLOCK_N):
            j = start + tl.arange(0, BLOCK_N)  # [BLOCK_N] key indices of the sequence
            j_ok = j < num_keys
            block = tl.load(table + j // BLOCK_SIZE, mask=j_ok, other=0)
            slot = block * BLOCK_SIZE + j % BLOCK_SIZE
            kv_off = slot * stride_slot + kv_head * stride_ch
            kt = tl.load(k_cache_ptr + kv_off[None, :] + d[:, None], mask=j_ok[None, :] & d_ok[:, None],
                         other=0.0)  # [D_P2, BLOCK_N]
            if UPCAST:
                kt = kt.to(tl.float32)
            s = tl.dot(q, kt, input_precision=PRECISION) * scale_log2  # [ROWS, BLOCK_N], log2 units
            s = tl.where(j[None, :] <= pos[:, None], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            vb = tl.load(v_cache_ptr + kv_off[:, None] + d[None, :], mask=j_ok[:, None] & d_ok[None, :],
                         other=0.0)  # [BLOCK_N, D_P2]
            if UPCAST:
                vb = vb.to(tl.float32)
            acc = acc * alpha[:, None] + tl.dot(p.to(vb.dtype), vb, input_precision=PRECISION)
            m_i = m_new
        acc = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(out_ptr + tok[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])

    @triton.jit
    def write(k_ptr, v_ptr, slots_ptr, k_cache_ptr, v_cache_ptr, cos_ptr, sin_ptr,
              stride_kt, stride_kh, stride_vt, stride_vh, stride_slot, stride_ch, stride_ct,
              KV_HEADS: tl.constexpr, HALF: tl.constexpr, H_P2: tl.constexpr, HALF_P2: tl.constexpr,
              ROTATE: tl.constexpr):
        t = tl.program_id(0)
        slot = tl.load(slots_ptr + t)
        h = tl.arange(0, H_P2)[:, None]
        i = tl.arange(0, HALF_P2)[None, :]  # [1, HALF_P2]: an index into each half of the head dimension
        ok = (h < KV_HEADS) & (i < HALF)  # [H_P2, HALF_P2]
        k_src = k_ptr + t * stride_kt + h * stride_kh
        x1 = tl.load(k_src + i, mask=ok, other=0.0).to(tl.float32)
        x2 = tl.load(k_src + HALF + i, mask=ok, other=0.0).to(tl.float32)
        if ROTATE:  # rotate-half RoPE: [x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin]
            c1 = tl.load(cos_ptr + t * stride_ct + i, mask=i < HALF, other=0.0).to(tl.float32)
            c2 = tl.load(cos_ptr + t * stride_ct + HALF + i, mask=i < HALF, other=0.0).to(tl.float32)
            s1 = tl.load(sin_ptr + t * stride_ct + i, mask=i < HALF, other=0.0).to(tl.float32)
            s2 = tl.load(sin_ptr + t * stride_ct + HALF + i, mask=i < HALF, other=0.0).to(tl.float32)
            x1, x2 = x1 * c1 - x2 * s1, x2 * c2 + x1 * s2
        dst = slot * stride_slot + h * stride_ch
        tl.store(k_cache_ptr + dst + i, x1.to(k_cache_ptr.dtype.element_ty), mask=ok)
        tl.store(k_cache_ptr + dst + HALF + i, x2.to(k_cache_ptr.dtype.element_ty), mask=ok)
        v_src = v_ptr + t * stride_vt + h * stride_vh
        tl.store(v_cache_ptr + dst + i, tl.load(v_src + i, mask=ok).to(v_cache_ptr.dtype.element_ty), mask=ok)
        tl.store(v_cache_ptr + dst + HALF + i, tl.load(v_src + HALF + i, mask=ok).to(v_cache_ptr.dtype.element_ty),
                 mask=ok)

    return attend, write
