"""The GGUF file's own 4-bit weights, kept as they are for small-batch (decode) matmuls on the CPU.

Q4_0 and Q4_1 blocks of 32 weights map exactly onto torch's CPU int4 kernel format,
`w = (q - 8) * scale + zero` per group of 32 input columns, so decode reads ~4.5 bits per weight
instead of 16 or 32 (decode on a CPU is bound by memory bandwidth). Large batches (prefill) use
the dense weights, where matrix-matrix products are compute-bound.

The compact kernels always take bfloat16 activations, whatever the model's dtype: torch's CPU int4/int8
kernels are vectorized for bfloat16 and fall back to a scalar loop for float32 (on an AVX2 CPU, a 1536x576
int4 product takes 73 us on a bfloat16 row and 945 us on a float32 one). Rounding the activations to bfloat16
before a 4-bit weight costs less precision than the weight itself (llama.cpp rounds them to 8 bits).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger("appliance.engine")

GROUP = 32
KERNEL_DTYPE = torch.bfloat16  # what the compact kernels read and write (see above)
_Q4_0, _Q4_1 = 2, 3  # GGMLQuantizationType values
_BLOCK_BYTES = {_Q4_0: 18, _Q4_1: 20}


@dataclass
class Int4Weight:
    """Unpacked 4-bit codes and per-group affine parameters: w[n, k] = (q[n, k] - 8) * scale[n, k//32] + zero[...]."""

    q: torch.Tensor  # [N, K] uint8 in 0..15
    scale: torch.Tensor  # [N, K // 32] float32
    zero: torch.Tensor  # [N, K // 32] float32

    def dequantize(self) -> torch.Tensor:
        """[N, K] float32."""
        n, k = self.q.shape
        groups = (self.q.view(n, k // GROUP, GROUP).float() - 8) * self.scale[..., None] + self.zero[..., None]
        return groups.view(n, k)

    def rows(self, index: torch.Tensor) -> Int4Weight:
        return Int4Weight(self.q[index], self.scale[index], self.zero[index])

    @staticmethod
    def cat(parts: list[Int4Weight]) -> Int4Weight:
        return Int4Weight(torch.cat([p.q for p in parts]), torch.cat([p.scale for p in parts]),
                          torch.cat([p.zero for p in parts]))


def int4_from_gguf(raw: np.ndarray, qtype: int, rows: int, cols: int) -> Int4Weight | None:
    """Read a Q4_0/Q4_1 tensor's blocks (raw uint8 data); None for any other type."""
    if qtype not in _BLOCK_BYTES or cols % GROUP:
        return None
    blocks = np.asarray(raw, dtype=np.uint8).reshape(rows, cols // GROUP, _BLOCK_BYTES[qtype])
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    if qtype == _Q4_1:  # w = d * q + m  ==  (q - 8) * d + (m + 8 d)
        m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        zero, qs = m + 8 * d, blocks[..., 4:]
    else:  # Q4_0: w = d * (q - 8)
        zero, qs = np.zeros_like(d), blocks[..., 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(rows, cols)  # low nibbles first, then high
    return Int4Weight(torch.from_numpy(np.ascontiguousarray(q)), torch.from_numpy(d), torch.from_numpy(zero))


class Linear:
    """y = x W^T (+ b). W is dense; batches of at most `small_batch` tokens read a compact copy instead:
    the GGUF's exact 4-bit blocks when given (`int4`), else, with `int8=True`, W quantized per output row.
    The compact path computes in KERNEL_DTYPE and returns x's dtype; a faster kernel over the same 4-bit
    weights can take it over (`use_small_batch_kernel`)."""

    def __init__(self, dense: torch.Tensor, bias: torch.Tensor | None = None, int4: Int4Weight | None = None,
                 small_batch: int = 0, int8: bool = False) -> None:
        self.dense = dense  # [N, K]
        self.bias = bias
        self.small_batch = small_batch
        self.packed: torch.Tensor | None = None
        self.scales_zeros: torch.Tensor | None = None
        self.int8: torch.Tensor | None = None
        self.int8_scale: torch.Tensor | None = None
        self.small_kernel: Callable[[torch.Tensor], torch.Tensor] | None = None
        if small_batch <= 0:
            return
        if int4 is not None and dense.shape[0] % 16 == 0:  # the kernel packs 16 rows at once
            self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(int4.q.to(torch.int32), 1)
            # [K // 32, N, 2] (scale, zero) in the kernel's activation dtype
            self.scales_zeros = torch.stack([int4.scale, int4.zero], -1).transpose(0, 1).contiguous().to(KERNEL_DTYPE)
        elif int8:
            scale = dense.float().abs().amax(dim=1).clamp(min=1e-12) / 127  # [N]
            self.int8 = (dense.float() / scale[:, None]).round().to(torch.int8)  # [N, K]
            self.int8_scale = scale.to(KERNEL_DTYPE)

    def use_small_batch_kernel(self, kernel: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """From now on, batches of at most `small_batch` tokens go through `kernel`: x [T, K] float32 (contiguous)
        -> y [T, N] float32, the bias included, over this layer's 4-bit weights (the fused decode layer's
        matmul lends itself to the eager layers once built: `fused_decode.py`)."""
        self.small_kernel = kernel

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, K] -> [T, N]."""
        if x.shape[0] > self.small_batch or (self.packed is None and self.int8 is None):
            return F.linear(x, self.dense, self.bias)
        # not inside a torch.compile trace (`compiled_decode.py`): its graphs keep torch's kernel, and need no
        # guard on whether one was lent meanwhile (a trace-time constant; unlike `is_compiling`, not a process-wide
        # flag that a background compilation would set for the engine thread's eager steps too)
        if not torch.compiler.is_dynamo_compiling() and self.small_kernel is not None:
            return self.small_kernel(x.float().contiguous()).to(x.dtype)
        xk = x.to(KERNEL_DTYPE)
        if self.packed is not None:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(xk, self.packed, GROUP, self.scales_zeros)
        else:
            y = torch.ops.aten._weight_int8pack_mm(xk, self.int8, self.int8_scale)
        y = y.to(x.dtype)
        return y if self.bias is None else y + self.bias


@functools.cache
def int4_kernel_available() -> bool:
    """Whether this torch build has the CPU int4 weight kernels."""
    try:
        q = torch.zeros(16, 32, dtype=torch.int32)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        sz = torch.zeros(1, 16, 2, dtype=torch.bfloat16)
        torch.ops.aten._weight_int4pack_mm_for_cpu(torch.zeros(1, 32, dtype=torch.bfloat16), packed, GROUP, sz)
    except (RuntimeError, AttributeError) as exc:
        log.info("int4 CPU kernels unavailable (%s): decode uses dense weights", exc)
        return False
    return True
