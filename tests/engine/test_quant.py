"""The GGUF's 4-bit weights: exact unpacking, the int4 matmul path, and the compact decode path's quality
against the dense float32 reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGUFReader
from gguf.quants import dequantize

from appliance.engine.loader import default_model_path
from appliance.engine.quant import Int4Weight, Linear, int4_from_gguf, int4_kernel_available
from appliance.engine.sampling import SamplingParams
from appliance.engine.tokenizer import ChatMessage
from tests.engine.prompts import QUESTIONS


def test_int4_unpacking_is_exact_for_the_real_gguf() -> None:
    reader = GGUFReader(str(default_model_path()))
    checked = 0
    for tensor in reader.tensors:
        if tensor.name.startswith(("blk.0.", "blk.29.")) and tensor.name.endswith("weight") and len(tensor.shape) == 2:
            rows, cols = int(tensor.shape[1]), int(tensor.shape[0])
            w = int4_from_gguf(tensor.data, int(tensor.tensor_type), rows, cols)
            assert w is not None, tensor.name
            expected = dequantize(tensor.data, tensor.tensor_type).reshape(rows, cols)
            np.testing.assert_array_equal(w.dequantize().numpy(), expected.astype(np.float32))
            checked += 1
    assert checked == 14


@pytest.mark.skipif(not int4_kernel_available(), reason="this torch build has no CPU int4 kernel")
@pytest.mark.parametrize("tokens", [1, 5, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int4_linear_matches_dense_on_random_weights(tokens: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(tokens)
    n, k = 48, 96
    w = Int4Weight(torch.randint(0, 16, (n, k), generator=gen, dtype=torch.uint8),
                   torch.rand(n, k // 32, generator=gen) * 0.02, torch.randn(n, k // 32, generator=gen) * 0.01)
    dense = w.dequantize()
    layer = Linear(dense.to(dtype), int4=w, small_batch=16)
    assert layer.packed is not None
    x = torch.randn(tokens, k, generator=gen)
    got = layer(x.to(dtype))
    assert got.dtype == dtype  # computed in the kernel's bf16, handed back in the model's dtype
    got, expected = got.float(), x @ dense.T
    assert ((got - expected).abs().max() / expected.abs().max()).item() < 2e-2


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_compact_decode_stays_close_to_the_dense_float32_reference(make_engine, dtype: str) -> None:
    """What serving runs on a CPU (4-bit decode weights, bf16 activations into their kernels; in bf16 mode
    everything else in bf16 too) is not bit-exact; measure how far it drifts from dense float32."""
    reference, served = make_engine(), make_engine(dtype=dtype, int4_decode_tokens=32)
    assert served.model.layers[0].qkv.packed is not None and reference.model.layers[0].qkv.packed is None
    prompts = [reference.tokenizer.apply_chat_template([ChatMessage("user", q)]) for q in QUESTIONS]
    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    a = reference.generate(prompts, params)
    b = served.generate(prompts, params)
    first_tokens_agree = sum(x.token_ids[0] == y.token_ids[0] for x, y in zip(a, b, strict=True))
    assert first_tokens_agree >= 7  # argmax of the prompt's last position rarely flips
    same_prefix = [next((i for i, (p, q) in enumerate(zip(x.token_ids, y.token_ids, strict=True)) if p != q), 16)
                   for x, y in zip(a, b, strict=True)]
    print("first tokens agree:", first_tokens_agree, "agreeing prefix lengths:", same_prefix)
    assert sum(same_prefix) / len(same_prefix) >= 8
