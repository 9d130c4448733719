"""The triton backend against the torch backend on fresh random inputs.

Without CUDA the kernels run under the Triton interpreter (TRITON_INTERPRET=1, set by tests/conftest.py) on
CPU tensors; with CUDA they are compiled and run on the GPU. Shapes stay small so the interpreter is quick.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")  # without CUDA, tests/conftest.py has set TRITON_INTERPRET=1

from kernels.base import AttentionBatch, get_backend  # noqa: E402
from kernels.rope import RotaryEmbedding  # noqa: E402
from kernels.rope import write_rotated as reference_write_rotated  # noqa: E402
from kernels.triton_attn import TritonAttention, write_rotated  # noqa: E402
from tests.kernels.paged import make_batch  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-4), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def to_device(batch: AttentionBatch) -> AttentionBatch:
    return AttentionBatch(batch.query_start_loc, batch.seq_lens, batch.positions.to(DEVICE),
                          batch.slot_mapping.to(DEVICE), batch.block_tables.to(DEVICE), batch.block_size)


def compare(batch: AttentionBatch, k_cache: torch.Tensor, v_cache: torch.Tensor, heads: int,
            gen: torch.Generator) -> None:
    """Run both backends on the same inputs; outputs and the written caches must agree."""
    tokens, kv_heads, dim, dtype = batch.query_start_loc[-1], k_cache.shape[2], k_cache.shape[3], k_cache.dtype
    q = torch.randn(tokens, heads, dim, generator=gen).to(dtype)
    k = torch.randn(tokens, kv_heads, dim, generator=gen).to(dtype)
    v = torch.randn(tokens, kv_heads, dim, generator=gen).to(dtype)
    torch_backend = get_backend("torch", torch.device("cpu"))
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    expected = torch_backend.forward(q, k, v, ref_k, ref_v, torch_backend.plan(batch))
    backend = get_backend("triton", DEVICE)
    assert isinstance(backend, TritonAttention)
    k_dev, v_dev = k_cache.to(DEVICE), v_cache.to(DEVICE)
    out = backend.forward(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), k_dev, v_dev, backend.plan(to_device(batch)))
    assert out.dtype == dtype and out.shape == q.shape
    torch.testing.assert_close(out.cpu().float(), expected.float(), **TOL[dtype])
    assert torch.equal(k_dev.cpu(), ref_k) and torch.equal(v_dev.cpu(), ref_v)


CASES = [(block_size, heads, kv_heads, seed) for block_size in (1, 4, 16)
         for heads, kv_heads in ((4, 4), (6, 2), (8, 1)) for seed in (0, 1)]


@pytest.mark.parametrize("block_size,heads,kv_heads,seed", CASES)
def test_ragged_batch_matches_torch(block_size: int, heads: int, kv_heads: int, seed: int) -> None:
    """Decode tokens, a fresh prefill and a chunk continuing a cached context, in one call."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    shapes = [(rng.randint(1, 40), 1), (0, rng.randint(2, 30)), (rng.randint(1, 25), rng.randint(2, 30)),
              (rng.randint(1, 60), 1)]
    rng.shuffle(shapes)
    compare(*make_batch(shapes, block_size, kv_heads, 32, torch.float32, gen, rng), heads, gen)


@pytest.mark.parametrize("dtype,heads,kv_heads,dim", [(torch.float32, 9, 3, 64), (torch.bfloat16, 9, 3, 64),
                                                      (torch.bfloat16, 4, 2, 48)])
def test_decode_only_and_mixed_steps(dtype: torch.dtype, heads: int, kv_heads: int, dim: int) -> None:
    """SmolLM2's shape (9 query heads over 3 KV heads), a head size that is not a power of two, bfloat16;
    a decode-only step (the small-tile variant) and a step with a chunk longer than one tile."""
    rng, gen = random.Random(7), torch.Generator().manual_seed(7)
    compare(*make_batch([(17, 1), (40, 1), (3, 1)], 16, kv_heads, dim, dtype, gen, rng), heads, gen)
    compare(*make_batch([(5, 1), (9, 45)], 16, kv_heads, dim, dtype, gen, rng), heads, gen)


@pytest.mark.parametrize("share,seed", [(0.3, 0), (1.0, 1), (0.1, 2)])
def test_sparse_positions_see_exactly_the_keys_at_or_before_them(share: float, seed: int) -> None:
    """Blended recompute: a scattered set of positions inside a filled sequence, next to a decode token.
    Each query sees every key up to its own position (reused and recomputed alike), no further."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    length, block_size, kv_heads, dim = 70, 8, 2, 32
    batch, k_cache, v_cache = make_batch([(length, 0), (12, 1)], block_size, kv_heads, dim, torch.float32, gen, rng)
    chosen = sorted(rng.sample(range(1, length - 1), int((length - 2) * share))) + [length - 1]
    table = batch.block_tables[0]
    slots = [int(table[p // block_size]) * block_size + p % block_size for p in chosen]
    sparse = AttentionBatch([0, len(chosen), len(chosen) + 1], [length, 13],
                            torch.tensor(chosen + [12]), torch.tensor(slots + batch.slot_mapping.tolist()),
                            batch.block_tables, block_size)
    compare(sparse, k_cache, v_cache, 6, gen)


@pytest.mark.parametrize("cache_dtype,table_dtype,kv_heads,dim", [(torch.float32, torch.float32, 2, 32),
                                                                  (torch.bfloat16, torch.float32, 3, 64),
                                                                  (torch.bfloat16, torch.bfloat16, 1, 16)])
def test_write_rotated_matches_the_rope_reference(cache_dtype: torch.dtype, table_dtype: torch.dtype,
                                                  kv_heads: int, dim: int) -> None:
    """Position-free keys placed at new positions: the kernel equals `kernels.rope.write_rotated`, values are
    copied unchanged, and no other slot is touched."""
    gen = torch.Generator().manual_seed(3)
    num_blocks, block_size, tokens = 6, 4, 11
    k_cache = torch.randn(num_blocks, block_size, kv_heads, dim, generator=gen).to(cache_dtype)
    v_cache = torch.randn(num_blocks, block_size, kv_heads, dim, generator=gen).to(cache_dtype)
    k_pre = torch.randn(tokens, kv_heads, dim, generator=gen)
    v = torch.randn(tokens, kv_heads, dim, generator=gen)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:tokens]
    positions = torch.randint(0, 500, (tokens,), generator=gen)
    cos, sin = RotaryEmbedding(dim, 512, 10000.0, dtype=table_dtype).tables(positions)  # [T, 1, D]
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    reference_write_rotated(ref_k, ref_v, k_pre, v, slots, cos, sin)
    k_dev, v_dev = k_cache.to(DEVICE), v_cache.to(DEVICE)
    write_rotated(k_dev, v_dev, k_pre.to(DEVICE), v.to(DEVICE), slots.to(DEVICE), cos.to(DEVICE), sin.to(DEVICE))
    tol = TOL[torch.float32] if cache_dtype == table_dtype == torch.float32 else dict(atol=6e-2, rtol=2e-2)
    torch.testing.assert_close(k_dev.cpu().float(), ref_k.float(), **tol)
    if DEVICE.type == "cuda" or cache_dtype == torch.float32:
        assert torch.equal(v_dev.cpu(), ref_v)
    else:  # the interpreter truncates float32 -> bfloat16 where GPUs (and torch) round to nearest: 1 ulp
        torch.testing.assert_close(v_dev.cpu(), ref_v, atol=0, rtol=2**-7)
    untouched = torch.ones(num_blocks * block_size, dtype=torch.bool)
    untouched[slots] = False
    assert torch.equal(k_dev.cpu().view(-1, kv_heads, dim)[untouched], k_cache.view(-1, kv_heads, dim)[untouched])
    # the rotation is real: the keys differ from the unrotated ones wherever the position is not 0
    moved = positions != 0
    assert not torch.allclose(k_dev.cpu().view(-1, kv_heads, dim)[slots[moved]].float(), k_pre[moved], atol=1e-2)


def test_backend_method_writes_like_the_function() -> None:
    gen = torch.Generator().manual_seed(5)
    k_pre, v = torch.randn(3, 1, 16, generator=gen), torch.randn(3, 1, 16, generator=gen)
    cos, sin = RotaryEmbedding(16, 64, 10000.0).tables(torch.tensor([5, 9, 60]))
    slots = torch.tensor([7, 0, 3])
    ref_k, ref_v = torch.zeros(2, 4, 1, 16), torch.zeros(2, 4, 1, 16)
    reference_write_rotated(ref_k, ref_v, k_pre, v, slots, cos, sin)
    k_cache, v_cache = torch.zeros(2, 4, 1, 16, device=DEVICE), torch.zeros(2, 4, 1, 16, device=DEVICE)
    get_backend("triton", DEVICE).write_rotated(k_cache, v_cache, k_pre.to(DEVICE), v.to(DEVICE), slots.to(DEVICE),
                                                cos.to(DEVICE), sin.to(DEVICE))
    torch.testing.assert_close(k_cache.cpu(), ref_k, **TOL[torch.float32])
    assert torch.equal(v_cache.cpu(), ref_v)


def test_kernels_compile_for_nvidia_gpus() -> None:
    """The compiled path differs from the interpreter (tl.dot shape limits, types): build every kernel variant
    to a cubin for A100 and H100, which needs no GPU (ptxas ships with triton). In a fresh process: the
    interpreter, once used, stays patched into triton.language."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    code = "from tests.kernels.test_triton_attention import compile_for; compile_for(80); compile_for(90)"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def compile_for(capability: int) -> None:
    """Compile the attention kernel (decode and prefill tiles, bfloat16 and float32) and the rotation kernel."""
    from triton import compile as triton_compile
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kernels.triton_attn import BLOCK_N, DECODE_ROWS, PREFILL_ROWS, _kernels

    attend, write = _kernels()
    target = GPUTarget("cuda", capability, 32)
    ints = dict.fromkeys(["num_tiles", "stride_qt", "stride_qh", "stride_ot", "stride_oh", "stride_slot",
                          "stride_ch", "stride_bt"], "i32")
    variants = (("bf16", "tf32", DECODE_ROWS, 3, 4), ("bf16", "tf32", PREFILL_ROWS, 8, 8),
                ("fp32", "ieee", PREFILL_ROWS, 1, 1))
    for dtype, precision, rows, group, group_p2 in variants:
        signature = {"q_ptr": f"*{dtype}", "k_cache_ptr": f"*{dtype}", "v_cache_ptr": f"*{dtype}",
                     "out_ptr": f"*{dtype}", "positions_ptr": "*i64", "block_tables_ptr": "*i64",
                     "tiles_ptr": "*i64", **ints, "scale_log2": "fp32"}
        constants = {"HEAD_DIM": 64, "D_P2": 64, "GROUP": group, "GROUP_P2": group_p2, "ROWS": rows,
                     "BLOCK_SIZE": 16, "BLOCK_N": BLOCK_N, "PRECISION": precision, "UPCAST": False}
        signature.update(dict.fromkeys(constants, "constexpr"))
        assert triton_compile(ASTSource(attend, signature, constants), target=target).asm["cubin"]
    for rotate in (False, True):
        signature = {"k_ptr": "*fp32", "v_ptr": "*fp32", "slots_ptr": "*i64", "k_cache_ptr": "*bf16",
                     "v_cache_ptr": "*bf16", "cos_ptr": "*bf16", "sin_ptr": "*bf16",
                     **dict.fromkeys(["stride_kt", "stride_kh", "stride_vt", "stride_vh", "stride_slot",
                                      "stride_ch", "stride_ct"], "i32")}
        constants = {"KV_HEADS": 3, "HALF": 32, "H_P2": 4, "HALF_P2": 32, "ROTATE": rotate}
        signature.update(dict.fromkeys(constants, "constexpr"))
        assert triton_compile(ASTSource(write, signature, constants), target=target).asm["cubin"]
