"""The `flashinfer` attention backend: FlashInfer's paged kernels on NVIDIA GPUs.

Our cache layout is FlashInfer's `NHD` paged layout ([num_pages, page_size, KVH, D] for K and for V), and a
block table row is a page list, so the cache is handed over as it is. Per step, `plan` turns the batch into
FlashInfer's CSR page description; the wrapper itself is planned on the first layer (only then are the head
counts and dtypes known) and run on every layer:
  * every sequence has one query at its last position: `BatchDecodeWithPagedKVCacheWrapper`;
  * otherwise `BatchPrefillWithPagedKVCacheWrapper`, causal when every sequence's queries are its last
    tokens (FlashInfer's causal mask is bottom-right aligned), else with a custom mask built from the true
    positions (the document cache's scattered recompute).
FlashInfer has no float32 kernels: float32 steps run on the triton backend. Both libraries load lazily.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kernels.base import AttentionBackend, AttentionBatch

WORKSPACE_BYTES = 128 * 2**20  # FlashInfer's recommended float workspace, shared by both wrappers


@dataclass
class FlashInferPlan:
    batch: AttentionBatch
    qo_indptr: torch.Tensor  # [B+1] int32 (host)
    kv_indptr: torch.Tensor  # [B+1] int32 (host): sequence i's pages are kv_indices[kv_indptr[i]:kv_indptr[i+1]]
    kv_indices: torch.Tensor  # [total pages] int32 (device)
    last_page_len: torch.Tensor  # [B] int32 (host): 1..block_size keys in each sequence's last page
    decode: bool
    custom_mask: torch.Tensor | None  # [sum_i q_len_i * seq_len_i] bool (device), row-major per sequence
    wrapper: Any = None  # the FlashInfer wrapper planned for this step, set by the first layer's forward
    fallback: Any = None  # the triton plan of a float32 step


def page_table(batch: AttentionBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(kv_indptr [B+1], kv_indices [pages], last_page_len [B]) of the batch's block tables, int32."""
    size = batch.block_size
    pages = torch.tensor([-(-n // size) for n in batch.seq_lens], dtype=torch.int32)
    indptr = torch.zeros(batch.num_seqs + 1, dtype=torch.int32)
    indptr[1:] = pages.cumsum(0)
    used = torch.arange(batch.block_tables.shape[1])[None, :] < pages[:, None]  # [B, max_blocks]
    indices = batch.block_tables[used.to(batch.block_tables.device)].to(torch.int32)  # row by row
    last = torch.tensor([n - (p - 1) * size for n, p in zip(batch.seq_lens, pages.tolist(), strict=True)],
                        dtype=torch.int32)
    return indptr, indices, last


def true_position_mask(batch: AttentionBatch) -> torch.Tensor | None:
    """None when every sequence's queries are its last tokens in order (bottom-right causal); else the flat
    custom mask: for each sequence, [q_len, seq_len] with key j visible to query t iff j <= positions[t]."""
    starts, lens = batch.query_start_loc, batch.seq_lens
    tail = torch.cat([torch.arange(n - (starts[i + 1] - starts[i]), n) for i, n in enumerate(lens)])  # [T]
    if torch.equal(tail.to(batch.positions.device), batch.positions):
        return None
    rows = [torch.arange(n, device=batch.positions.device)[None, :] <= batch.positions[starts[i]:starts[i + 1], None]
            for i, n in enumerate(lens)]
    return torch.cat([r.flatten() for r in rows])


class FlashInferAttention(AttentionBackend):
    name = "flashinfer"

    def __init__(self) -> None:
        self._workspace: torch.Tensor | None = None
        self._prefill: Any = None
        self._decode: Any = None
        self._fallback: Any = None
        self._active: FlashInferPlan | None = None  # the plan the wrappers are planned for now

    def plan(self, batch: AttentionBatch) -> FlashInferPlan:
        starts = batch.query_start_loc
        qo_indptr = torch.tensor(starts, dtype=torch.int32)
        kv_indptr, kv_indices, last = page_table(batch)
        mask = true_position_mask(batch)
        decode = mask is None and all(starts[i + 1] - starts[i] == 1 for i in range(batch.num_seqs))
        return FlashInferPlan(batch, qo_indptr, kv_indptr, kv_indices, last, decode, mask)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, plan: FlashInferPlan) -> torch.Tensor:
        if q.dtype == torch.float32:
            return self._float32(q, k, v, k_cache, v_cache, plan)
        kv_heads, dim = k_cache.shape[2], k_cache.shape[3]
        slots = plan.batch.slot_mapping
        k_cache.view(-1, kv_heads, dim).index_copy_(0, slots, k.to(k_cache.dtype))
        v_cache.view(-1, kv_heads, dim).index_copy_(0, slots, v.to(v_cache.dtype))
        if self._active is not plan:  # first layer, or another plan (the document cache's) ran in between
            plan.wrapper, self._active = self._planned(plan, q, k_cache), plan
        return plan.wrapper.run(q.contiguous(), (k_cache, v_cache))  # [T, H, D]

    def _planned(self, plan: FlashInferPlan, q: torch.Tensor, k_cache: torch.Tensor) -> Any:
        """Plan this step's wrapper for the model's head counts and dtypes (once per step)."""
        import flashinfer

        if self._workspace is None:
            self._workspace = torch.zeros(WORKSPACE_BYTES, dtype=torch.uint8, device=q.device)
            self._prefill = flashinfer.BatchPrefillWithPagedKVCacheWrapper(self._workspace, kv_layout="NHD")
            self._decode = flashinfer.BatchDecodeWithPagedKVCacheWrapper(self._workspace, kv_layout="NHD")
        heads, dim = q.shape[1], q.shape[2]
        shape = (plan.kv_indptr, plan.kv_indices, plan.last_page_len)
        sizes = (heads, k_cache.shape[2], dim, plan.batch.block_size)
        dtypes = {"q_data_type": q.dtype, "kv_data_type": k_cache.dtype}
        if plan.decode:
            self._decode.plan(*shape, *sizes, **dtypes)
            return self._decode
        self._prefill.plan(plan.qo_indptr, *shape, *sizes, custom_mask=plan.custom_mask,
                           causal=plan.custom_mask is None, **dtypes)
        return self._prefill

    def _float32(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                 v_cache: torch.Tensor, plan: FlashInferPlan) -> torch.Tensor:
        """FlashInfer's kernels take 16-bit inputs only: a float32 engine attends with the triton kernels."""
        from kernels.triton_attn import TritonAttention

        if self._fallback is None:
            self._fallback = TritonAttention()
        if plan.fallback is None:
            plan.fallback = self._fallback.plan(plan.batch)
        return self._fallback.forward(q, k, v, k_cache, v_cache, plan.fallback)
