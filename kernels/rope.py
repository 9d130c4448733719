"""Rotary position embeddings (rotate-half layout, as Hugging Face Llama/Qwen2/Mistral use)."""

from __future__ import annotations

import math
from typing import Any

import torch


def inverse_frequencies(head_dim: int, theta: float, scaling: dict[str, Any] | None = None) -> torch.Tensor:
    """[head_dim // 2] float64 inverse frequencies, with Llama-3 style scaling when configured."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if not scaling:
        return inv
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
        old_len = scaling.get("original_max_position_embeddings", 8192)
        wavelen = 2 * math.pi / inv
        smooth = (old_len / wavelen - low) / (high - low)
        scaled = torch.where(wavelen > old_len / low, inv / factor, inv)
        mid = (wavelen <= old_len / low) & (wavelen >= old_len / high)
        return torch.where(mid, (1 - smooth) * inv / factor + smooth * inv, scaled)
    if kind == "linear":
        return inv / scaling["factor"]
    raise ValueError(f"unsupported rope scaling {kind!r}")


class RotaryEmbedding:
    """Precomputed cos/sin tables; `apply` rotates q and k of tokens at given positions."""

    def __init__(self, head_dim: int, max_position: int, theta: float, scaling: dict[str, Any] | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> None:
        inv = inverse_frequencies(head_dim, theta, scaling)
        angles = torch.outer(torch.arange(max_position, dtype=torch.float64), inv)  # [P, D/2]
        self.cos = angles.cos().to(dtype=dtype, device=device)
        self.sin = angles.sin().to(dtype=dtype, device=device)

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for `positions` [T] -> each [T, 1, D] (halves duplicated), shared by all layers."""
        cos, sin = self.cos[positions], self.sin[positions]
        return torch.cat((cos, cos), -1).unsqueeze(1), torch.cat((sin, sin), -1).unsqueeze(1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, heads, D]; cos/sin: [T, 1, D] -> x rotated by its token's angle."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def inverse_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The tables of the opposite angles: rotating by them undoes `apply_rotary` with (cos, sin)."""
    return cos, -sin


def write_rotated(k_cache: torch.Tensor, v_cache: torch.Tensor, k_pre: torch.Tensor, v: torch.Tensor,
                  slots: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """Place position-free KV into a paged cache: keys rotated to their new positions, values as they are.

    This is how the document cache moves a chunk to any position of a later prompt (RoPE rotations compose:
    rotating a pre-RoPE key by angle(p) gives exactly the key computed at position p).
    k_cache/v_cache: [num_blocks, block_size, KVH, D]; k_pre/v: [T, KVH, D] (keys before RoPE);
    slots: [T] int64 flat cache slots; cos/sin: [T, 1, D] tables of the target positions (`RotaryEmbedding.tables`).
    """
    kvh, dim = k_cache.shape[2], k_cache.shape[3]
    k_flat, v_flat = k_cache.view(-1, kvh, dim), v_cache.view(-1, kvh, dim)
    k_rot = apply_rotary(k_pre.to(cos.dtype), cos, sin)
    k_flat.index_copy_(0, slots, k_rot.to(k_flat.dtype))
    v_flat.index_copy_(0, slots, v.to(v_flat.dtype))
