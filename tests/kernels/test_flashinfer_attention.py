"""The flashinfer backend against the torch backend.

`gpu` tests run FlashInfer itself on CUDA (skipped without it). The other tests run everywhere: they check
the page table and mask the backend hands FlashInfer, through a stand-in module that implements the
wrappers' documented semantics in plain torch (CSR pages, last-page lengths, bottom-right causal mask,
flattened custom mask), so a mistake in what we pass shows up on a CPU too.
"""

from __future__ import annotations

import random
import sys
import types
from typing import Any

import pytest
import torch

from kernels.base import AttentionBatch, get_backend
from kernels.flashinfer_attn import FlashInferAttention, page_table, true_position_mask
from tests.kernels.paged import make_batch


class _Wrapper:
    """FlashInfer's Batch{Prefill,Decode}WithPagedKVCacheWrapper as documented, in float64 torch."""

    def __init__(self, workspace: torch.Tensor, kv_layout: str = "NHD", decode: bool = False) -> None:
        assert kv_layout == "NHD" and workspace.dtype == torch.uint8
        self.decode, self.planned = decode, None

    def plan(self, *args: Any, **kwargs: Any) -> None:
        if self.decode:  # no qo_indptr: one query per sequence
            args = (torch.arange(len(args[0]), dtype=torch.int32), *args)
        assert len(args) == 8, "optional arguments are passed by keyword"
        assert all(t.dtype == torch.int32 for t in args[:4])
        self.planned = (args, kwargs)

    def run(self, q: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        assert self.planned is not None
        (qo, kv_indptr, indices, last, heads, kv_heads, dim, size), kw = self.planned
        assert q.dtype == kw["q_data_type"] and kv[0].dtype == kw["kv_data_type"] and q.shape[1:] == (heads, dim)
        mask, offset, out = kw.get("custom_mask"), 0, torch.empty_like(q)
        for i in range(len(qo) - 1):
            pages = indices[kv_indptr[i]:kv_indptr[i + 1]].long()
            kv_len = (len(pages) - 1) * size + int(last[i])
            k, v = (c[pages].reshape(-1, kv_heads, dim)[:kv_len].double() for c in kv)
            rows = q[qo[i]:qo[i + 1]].double()
            q_len = len(rows)
            if mask is not None:
                visible = mask[offset:offset + q_len * kv_len].view(q_len, kv_len)
                offset += q_len * kv_len
            elif kw.get("causal") or self.decode:
                visible = torch.arange(kv_len)[None, :] <= torch.arange(q_len)[:, None] + kv_len - q_len
            else:
                visible = torch.ones(q_len, kv_len, dtype=torch.bool)
            group = heads // kv_heads
            scores = torch.einsum("qhd,khd->hqk", rows, k.repeat_interleave(group, 1)) / dim ** 0.5
            probs = scores.masked_fill(~visible.to(scores.device), float("-inf")).softmax(-1)
            out[qo[i]:qo[i + 1]] = torch.einsum("hqk,khd->qhd", probs, v.repeat_interleave(group, 1)).to(q.dtype)
        return out


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("flashinfer")
    module.BatchPrefillWithPagedKVCacheWrapper = _Wrapper  # type: ignore[attr-defined]
    module.BatchDecodeWithPagedKVCacheWrapper = lambda ws, kv_layout="NHD": _Wrapper(ws, kv_layout, True)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flashinfer", module)
    monkeypatch.setattr("kernels.flashinfer_attn.WORKSPACE_BYTES", 1024)


def compare(batch: AttentionBatch, k_cache: torch.Tensor, v_cache: torch.Tensor, heads: int, gen: torch.Generator,
            device: torch.device, dtype: torch.dtype = torch.bfloat16) -> FlashInferAttention:
    """Both backends on the same inputs (float32 reference from the same rounded values); caches must agree."""
    tokens, kv_heads, dim = batch.query_start_loc[-1], k_cache.shape[2], k_cache.shape[3]
    q, k, v = (torch.randn(tokens, h, dim, generator=gen).to(dtype) for h in (heads, kv_heads, kv_heads))
    k_cache, v_cache = k_cache.to(dtype), v_cache.to(dtype)
    reference = get_backend("torch", torch.device("cpu"))
    ref_k, ref_v = k_cache.float(), v_cache.float()
    expected = reference.forward(q.float(), k.float(), v.float(), ref_k, ref_v, reference.plan(batch))
    backend = get_backend("flashinfer", device)
    assert isinstance(backend, FlashInferAttention)
    on = AttentionBatch(batch.query_start_loc, batch.seq_lens, batch.positions.to(device),
                        batch.slot_mapping.to(device), batch.block_tables.to(device), batch.block_size)
    k_dev, v_dev = k_cache.to(device), v_cache.to(device)
    plan = backend.plan(on)
    for _ in range(2):  # two layers: planned once, run twice
        out = backend.forward(q.to(device), k.to(device), v.to(device), k_dev, v_dev, plan)
        tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
        torch.testing.assert_close(out.float().cpu(), expected, **tol)
    assert torch.equal(k_dev.float().cpu(), ref_k) and torch.equal(v_dev.float().cpu(), ref_v)
    return backend


def mixed_batch(seed: int, block_size: int, kv_heads: int, dim: int) -> tuple[AttentionBatch, torch.Tensor,
                                                                                torch.Tensor, torch.Generator]:
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    shapes = [(rng.randint(1, 40), 1), (0, rng.randint(2, 30)), (rng.randint(1, 25), rng.randint(2, 30)),
              (rng.randint(1, 60), 1)]
    rng.shuffle(shapes)
    return (*make_batch(shapes, block_size, kv_heads, dim, torch.float32, gen, rng), gen)


def sparse_batch(seed: int, kv_heads: int, dim: int) -> tuple[AttentionBatch, torch.Tensor, torch.Tensor,
                                                              torch.Generator]:
    """Scattered recompute positions inside a filled 70-token sequence, next to a decode token."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    batch, k_cache, v_cache = make_batch([(70, 0), (12, 1)], 16, kv_heads, dim, torch.float32, gen, rng)
    chosen = sorted(rng.sample(range(1, 69), 20)) + [69]
    slots = [int(batch.block_tables[0, p // 16]) * 16 + p % 16 for p in chosen]
    sparse = AttentionBatch([0, len(chosen), len(chosen) + 1], [70, 13], torch.tensor(chosen + [12]),
                            torch.tensor(slots + batch.slot_mapping.tolist()), batch.block_tables, 16)
    return sparse, k_cache, v_cache, gen


def test_page_table_lists_each_sequences_pages_in_order() -> None:
    tables = torch.tensor([[7, 2, 0], [4, 0, 0], [1, 5, 3]])
    batch = AttentionBatch([0, 1, 4, 5], [33, 16, 35], torch.tensor([32, 13, 14, 15, 34]),
                           torch.zeros(5, dtype=torch.int64), tables, 16)
    indptr, indices, last = page_table(batch)
    assert indptr.tolist() == [0, 3, 4, 7] and indices.tolist() == [7, 2, 0, 4, 1, 5, 3] and last.tolist() == [1, 16, 3]
    assert true_position_mask(batch) is None  # every query is its sequence's last token(s)


def test_mask_follows_true_positions() -> None:
    batch = AttentionBatch([0, 2, 3], [5, 4], torch.tensor([1, 4, 2]), torch.zeros(3, dtype=torch.int64),
                           torch.zeros(2, 1, dtype=torch.int64), 16)
    mask = true_position_mask(batch)
    assert mask is not None
    expected = [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0]]  # seq 0: rows at 1 and 4; seq 1: row at 2 of 4
    assert mask.int().tolist() == expected[0] + expected[1] + expected[2]


@pytest.mark.parametrize("seed,block_size,heads,kv_heads", [(0, 16, 9, 3), (1, 1, 8, 1), (2, 4, 4, 4)])
def test_stand_in_mixed_decode_and_sparse_steps(stand_in: None, seed: int, block_size: int, heads: int,
                                                kv_heads: int) -> None:
    cpu = torch.device("cpu")
    batch, k_cache, v_cache, gen = mixed_batch(seed, block_size, kv_heads, 32)
    backend = compare(batch, k_cache, v_cache, heads, gen, cpu)
    assert backend._prefill.planned[1]["causal"] and backend._prefill.planned[1]["custom_mask"] is None
    decode_only = make_batch([(9, 1), (30, 1)], block_size, kv_heads, 32, torch.float32, gen, random.Random(seed))
    backend = compare(*decode_only, heads, gen, cpu)
    assert backend._decode.planned is not None and backend._prefill.planned is None
    sparse, k_cache, v_cache, gen = sparse_batch(seed, kv_heads, 32)
    backend = compare(sparse, k_cache, v_cache, heads, gen, cpu)
    assert backend._prefill.planned[1]["custom_mask"] is not None


def test_stand_in_steps_may_interleave(stand_in: None) -> None:
    """A second plan used between two layers of the first (the document cache's recompute) re-plans FlashInfer."""
    cpu = torch.device("cpu")
    first, k_first, v_first, gen = mixed_batch(4, 16, 2, 32)
    second, k_second, v_second, _ = sparse_batch(5, 2, 32)
    backend = get_backend("flashinfer", cpu)
    reference = get_backend("torch", cpu)
    plans = backend.plan(first), backend.plan(second)
    for batch, k_cache, v_cache, plan in ((first, k_first, v_first, plans[0]), (second, k_second, v_second, plans[1]),
                                          (first, k_first, v_first, plans[0])):
        q, k, v = (torch.randn(batch.query_start_loc[-1], h, 32, generator=gen).bfloat16() for h in (6, 2, 2))
        out = backend.forward(q, k, v, k_cache.bfloat16(), v_cache.bfloat16(), plan)
        ref_k, ref_v = k_cache.bfloat16().float(), v_cache.bfloat16().float()
        expected = reference.forward(q.float(), k.float(), v.float(), ref_k, ref_v, reference.plan(batch))
        torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)


def test_stand_in_float32_runs_on_triton(stand_in: None) -> None:
    pytest.importorskip("triton")
    batch, k_cache, v_cache, gen = mixed_batch(3, 16, 2, 32)
    backend = compare(batch, k_cache, v_cache, 6, gen, torch.device("cuda" if torch.cuda.is_available() else "cpu"),
                      dtype=torch.float32)
    assert backend._prefill is None  # FlashInfer was never planned


@pytest.mark.gpu
@pytest.mark.parametrize("seed,block_size,heads,kv_heads,dim", [(0, 16, 9, 3, 64), (1, 16, 8, 1, 128),
                                                                (2, 1, 4, 4, 64), (3, 8, 32, 8, 128)])
def test_flashinfer_matches_torch(seed: int, block_size: int, heads: int, kv_heads: int, dim: int) -> None:
    pytest.importorskip("flashinfer")
    cuda = torch.device("cuda")
    batch, k_cache, v_cache, gen = mixed_batch(seed, block_size, kv_heads, dim)
    compare(batch, k_cache, v_cache, heads, gen, cuda)
    decode_only = make_batch([(9, 1), (300, 1), (1, 1)], block_size, kv_heads, dim, torch.float32, gen,
                             random.Random(seed))
    compare(*decode_only, heads, gen, cuda)
    compare(*sparse_batch(seed, kv_heads, dim)[:3], heads, gen, cuda)

