"""Decode steps on the CPU through a compiled decoder layer (torch.compile, Inductor's C++ backend).

A decode step of a small model is overhead-bound on a CPU: each layer is ~40 small ops, and each pays
Python and dispatcher costs comparable to its own work. Compiled, the elementwise work between the matmuls
(RMSNorm, RoPE, residual adds, SwiGLU, the softmax) fuses into a few C++ loops and the layer's Python is
gone; the matmuls (4-bit or dense) stay the same aten kernels.

What is compiled is the eager layer itself (`model.eager_layer_call` over the torch attention backend),
traced with the layer as an argument: its weights are graph inputs, so one graph serves every layer, and
shapes are dynamic (batch size, context length, cache size). PyTorch specializes a batch of one, so two
graphs are built in all. They are built on a background thread at start, over a scratch cache of their
own, while the eager path serves; decode steps switch to them once both exist (`ready`). Inductor's
cache lives under the data dir, so a restart reuses the generated code. A compilation that fails (no C++
compiler, say) is logged once and decode stays eager.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from appliance.engine.background_build import BackgroundBuild
from appliance.engine.model import eager_layer_call
from appliance.engine.work import WorkItem
from kernels.base import AttentionBackend, AttentionBatch

if TYPE_CHECKING:
    from appliance.engine.model import CausalLM, DecoderLayer


def is_decode_step(items: list[WorkItem]) -> bool:
    """Whether every item of a step computes one token after a context, through the whole model."""
    return all(len(item.positions) == 1 and item.positions[0] > 0 and item.first_layer == 0
               and item.last_layer is None and item.entering is None for item in items)


class CompiledDecode(BackgroundBuild):
    """Contract: a `LayerCall` (`model.eager_layer_call`, compiled), for decode steps only (`is_decode_step`),
    usable once `ready`; built by `start` on a background thread (`wait` joins it: `BackgroundBuild`)."""

    WARM_BATCHES = (1, 3)  # a batch of one, and one that stands for every larger batch
    WARM_CONTEXT = 37  # context length of the warm-up steps (any length > 1 not tied to the cache's size)

    name = "compiled decode"
    fallback = "decode steps stay eager"

    def __init__(self, model: CausalLM, backend: AttentionBackend, block_size: int, cache_dir: Path,
                 compiler: str | Callable[..., Any] = "inductor") -> None:
        """`compiler`: torch.compile's backend (Inductor's C++ code; tests pass one that fails)."""
        super().__init__()
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir))
        self.model, self.backend, self.block_size = model, backend, block_size
        self._compiled = torch.compile(eager_layer_call, backend=compiler, dynamic=True)

    def __call__(self, layer: DecoderLayer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 k_cache: torch.Tensor, v_cache: torch.Tensor, backend: AttentionBackend, plan: Any) -> torch.Tensor:
        return self._compiled(layer, x, cos, sin, k_cache, v_cache, backend, plan)

    def _build(self) -> str:
        for batch_size in self.WARM_BATCHES:
            self._warm_step(batch_size)
        return ""

    def _warm_step(self, batch_size: int) -> None:
        """One decode step of `batch_size` sequences through every layer, over a scratch cache of its own, made
        as the runner makes its cache (outside inference mode) and run as the runner runs a step (inside it):
        the graphs' guards then hold for real steps."""
        cfg, bs, context = self.model.config, self.block_size, self.WARM_CONTEXT
        blocks_per_seq = -(-context // bs)
        shape = (batch_size * blocks_per_seq + 1, bs, cfg.num_kv_heads, cfg.head_dim)
        k_cache = torch.zeros(shape, dtype=self.model.dtype, device=self.model.device)
        v_cache = torch.zeros_like(k_cache)
        with torch.inference_mode():
            tables = torch.arange(batch_size * blocks_per_seq).view(batch_size, blocks_per_seq)  # [B, blocks]
            last = context - 1
            batch = AttentionBatch(
                query_start_loc=list(range(batch_size + 1)), seq_lens=[context] * batch_size,
                positions=torch.full((batch_size,), last), slot_mapping=tables[:, last // bs] * bs + last % bs,
                block_tables=tables, block_size=bs)
            plan = self.backend.plan(batch)
            cos, sin = self.model.rope.tables(batch.positions)
            x = torch.zeros(batch_size, cfg.hidden_size)  # [B, hidden] float32 residual stream
            for layer in self.model.layers:
                x = self(layer, x, cos, sin, k_cache, v_cache, self.backend, plan)
