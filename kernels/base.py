"""The attention interface every backend implements, and the registry that picks one.

One call handles a whole ragged batch: prefill chunks and single decode tokens of many sequences,
each query token at its true position, keys and values read from a paged cache through a block table.

Paged cache layout (per layer): `k_cache`, `v_cache` of shape [num_blocks, block_size, num_kv_heads, head_dim];
token `t` of a sequence lives in slot `block_table[t // block_size] * block_size + t % block_size`.
"""

from __future__ import annotations

import importlib
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


_REGISTRY: dict[str, tuple[str, str]] = {
    "torch": ("kernels.torch_ref", "TorchAttention"),
}


def register_backend(name: str, module: str, cls: str) -> None:
    """Register a backend by import path, so its GPU library is only imported when it is chosen."""
    _REGISTRY[name] = (module, cls)


def available_backends() -> list[str]:
    return sorted(_REGISTRY)


def get_backend(name: str, device: torch.device, loader: Callable[[str], Any] = importlib.import_module
                ) -> AttentionBackend:
    """Instantiate backend `name`; `auto` is the torch backend on CPU."""
    if name == "auto":
        name = "torch"
    if name not in _REGISTRY:
        raise ValueError(f"unknown attention backend {name!r} (available: {', '.join(available_backends())})")
    module, cls = _REGISTRY[name]
    return getattr(loader(module), cls)()
