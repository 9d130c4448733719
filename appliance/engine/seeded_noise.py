"""Exponential noise that a seed fixes, made of tensor ops alone: the same draws on any device, in any batch.

A seeded request's draw at output position `step` for token `j` depends on (seed, step, j) only, never on
which other requests share its step, on a generator's state, or on the device. The noise is a counter-based
hash (a Weyl sequence through Wellons' `lowbias32` finaliser) computed in int64 without overflow.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9  # the Weyl sequence's step between neighbouring token ids


def exponential_noise(seeds: list[int], steps: list[int], token_ids: torch.Tensor) -> torch.Tensor:
    """Exp(1) draws for `token_ids` [M, W] (int64) of M rows, row i keyed by (seeds[i], steps[i]) -> [M, W]
    float32 on token_ids' device."""
    device = token_ids.device
    lo = torch.tensor([s & _MASK32 for s in seeds], dtype=torch.int64, device=device)
    hi = torch.tensor([(s >> 32) & _MASK32 for s in seeds], dtype=torch.int64, device=device)
    step = torch.tensor([t & _MASK32 for t in steps], dtype=torch.int64, device=device)
    row_key = _mix32(_mix32(_mix32(lo) ^ hi) ^ step)  # [M]
    bits = _mix32((row_key[:, None] + token_ids * _GOLDEN) & _MASK32)  # [M, W] uniform 32-bit
    # 23 bits and a half-step: float32 holds (2^23 - 1 + 0.5) exactly, so this is in (0, 1), never 0 or 1
    # (24 bits would round their top value up to 1: no noise, and a token ruled out at 0/0 = NaN would win)
    uniform = ((bits >> 9).to(torch.float32) + 0.5) * 2.0 ** -23
    return -torch.log(uniform)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding 32-bit values: a bijection on [0, 2^32) that mixes every bit."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for x in [0, 2^32): the constant split in 16-bit halves keeps every product below 2^49."""
    low, high = c & 0xFFFF, c >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & _MASK32
