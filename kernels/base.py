"""The attention interface every backend implements, and the registry that picks one.

One call handles a whole ragged batch: prefill chunks and single decode tokens of many sequences,
each query token at its true position, keys and values read from a paged cache through a block table.

Paged cache layout (per layer): `k_cache`, `v_cache` of shape [num_blocks, block_size, num_kv_heads, head_dim];
token `t` of a sequence lives in slot `block_table[t // block_size] * block_size + t % block_size`.
"""

from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class AttentionBatch:
    """Where each new token goes and what each sequence attends to, for one engine step.

    Sequences are laid out one after the other in the flat token dimension T.
    """

    query_start_loc: list[int]  # [B+1] offsets of each sequence's new tokens in the flat batch
    seq_lens: list[int]  # [B] keys each sequence attends over after this step (context + new tokens)
    positions: torch.Tensor  # [T] int64 position of each new token
    slot_mapping: torch.Tensor  # [T] int64 flat cache slot each new token's K/V is written to
    block_tables: torch.Tensor  # [B, max_blocks] int64 (padded with 0)
    block_size: int

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens)

    def query_len(self, i: int) -> int:
        return self.query_start_loc[i + 1] - self.query_start_loc[i]


class AttentionBackend(ABC):
    """Paged attention over a ragged batch.

    Contract:
      * `plan(batch)` is called once per engine step and may precompute anything shared by all layers.
      * `forward(q, k, v, k_cache, v_cache, plan)` first writes the new tokens' `k`/`v` into the cache at
        `batch.slot_mapping`, then returns attention of every query over its sequence's keys `0..pos`
        (causal by true position), with grouped-query heads (num_heads a multiple of num_kv_heads).
        q: [T, H, D], k/v: [T, KVH, D]; returns [T, H, D] in q's dtype. `scale` is 1/sqrt(D).
    """

    name: str = ""

    @abstractmethod
    def plan(self, batch: AttentionBatch) -> Any: ...

    @abstractmethod
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, plan: Any) -> torch.Tensor: ...

    def write_rotated(self, k_cache: torch.Tensor, v_cache: torch.Tensor, k_pre: torch.Tensor, v: torch.Tensor,
                      slots: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
        """Place position-free KV at new positions of the cache (`kernels.rope.write_rotated`, whose contract
        this is); a backend may replace it with a fused kernel."""
        from kernels.rope import write_rotated

        write_rotated(k_cache, v_cache, k_pre, v, slots, cos, sin)


_REGISTRY: dict[str, tuple[str, str]] = {
    "torch": ("kernels.torch_ref", "TorchAttention"),
    "triton": ("kernels.triton_attn", "TritonAttention"),
    "flashinfer": ("kernels.flashinfer_attn", "FlashInferAttention"),
}
_GPU_PREFERENCE = (("flashinfer", "flashinfer"), ("triton", "triton"))  # (backend, the library it needs), best first


def register_backend(name: str, module: str, cls: str) -> None:
    """Register a backend by import path, so its GPU library is only imported when it is chosen."""
    _REGISTRY[name] = (module, cls)


def available_backends() -> list[str]:
    return sorted(_REGISTRY)


def installed(module: str) -> bool:
    """Whether a top-level module can be imported, without importing it."""
    return importlib.util.find_spec(module) is not None


def auto_backend(device: torch.device, has_module: Callable[[str], bool] = installed) -> str:
    """The backend `auto` stands for: on CUDA flashinfer, else triton, whichever is installed; torch otherwise."""
    if device.type == "cuda":
        for name, module in _GPU_PREFERENCE:
            if has_module(module):
                return name
    return "torch"


def get_backend(name: str, device: torch.device, loader: Callable[[str], Any] = importlib.import_module
                ) -> AttentionBackend:
    """Instantiate backend `name` (`auto`: see `auto_backend`). Only the chosen backend's module is imported."""
    if name == "auto":
        name = auto_backend(device)
    if name not in _REGISTRY:
        raise ValueError(f"unknown attention backend {name!r} (available: {', '.join(available_backends())})")
    module, cls = _REGISTRY[name]
    return getattr(loader(module), cls)()
