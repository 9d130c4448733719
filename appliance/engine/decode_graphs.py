"""CUDA graphs for decode steps: the whole forward captured once per padded batch size, then replayed.

A decode step of a small model is launch-bound: ~10 kernels per layer, each a few microseconds of GPU work
behind tens of microseconds of Python and launch overhead. A step whose sequences each compute one token
(`fits`) is instead copied into static input buffers, padded up to the next captured batch size, and served
by one graph replay. Padding rows sit at position 0 of a scratch block that no sequence owns (the runner
allocates it past the block manager's blocks), so their K/V writes and reads never touch a real sequence.

Attention inside the graphs is the triton kernel: for a decode step its launch geometry (one tile per
sequence and KV head) depends on the batch size only, and it reads positions, slots and block tables from
device memory, so a replay sees the step's values. Sampling stays outside the graph.

`capture=False` runs the same static-buffer path eagerly, without CUDA: how the tests check the padding
and buffer logic on CPU (under the Triton interpreter).
"""

from __future__ import annotations

from typing import Any

import torch

from appliance.engine.model import CausalLM, KVPair
from kernels.base import AttentionBatch


def decode_graph_mode(setting: str, device_type: str, requested_backend: str, has_triton: bool) -> str:
    """The runner's decode-graph mode for `EngineConfig.decode_graphs` = `setting`.

    The graphs' attention is always the triton kernel (their plans are triton's static buffers). So `auto`
    captures them on CUDA, with triton installed, when the attention backend asked for is `auto` or `triton`:
    with `auto` (which picks flashinfer where installed), prefill and mixed steps run on flashinfer and decode
    steps on triton, a split the engine logs at start. A backend named explicitly (`flashinfer`, `torch`) is
    followed for every step: no graphs.
    """
    if setting != "auto":
        return setting
    if device_type != "cuda" or not has_triton:
        return "off"
    return "capture" if requested_backend in ("auto", "triton") else "off"


def graph_batch_sizes(max_batch: int) -> list[int]:
    """The batch sizes captured: 1, 2, 4, 8, then multiples of 16, and `max_batch` itself."""
    sizes = {s for s in (1, 2, 4, 8, *range(16, max_batch + 1, 16)) if s <= max_batch}
    return sorted(sizes | {max_batch})


class DecodeGraphs:
    """Contract: `fits(batch)` says whether a step can be replayed (every sequence computes one token, at most
    `max_batch` sequences, block tables no wider than `max_blocks`); `run(batch, input_ids)` returns the
    final hidden states [B, hidden] of such a step (a view into a static buffer, valid until the next run)."""

    def __init__(self, model: CausalLM, kv_caches: list[KVPair], block_size: int, scratch_block: int,
                 max_batch: int, max_blocks: int, capture: bool = True) -> None:
        from kernels.triton_attn import DECODE_ROWS, TritonAttention, TritonPlan

        device = model.device
        self.model, self.kv_caches = model, kv_caches
        self.max_batch, self.max_blocks = max_batch, max_blocks
        self.sizes = graph_batch_sizes(max_batch)
        self.backend = TritonAttention()
        self.scratch_slot = scratch_block * block_size
        self.scratch_block = scratch_block
        i64 = torch.int64
        self.input_ids = torch.zeros(max_batch, dtype=i64, device=device)  # [max_batch]
        self.positions = torch.zeros(max_batch, dtype=i64, device=device)  # [max_batch]
        self.slots = torch.full((max_batch,), self.scratch_slot, dtype=i64, device=device)  # [max_batch]
        self.block_tables = torch.full((max_batch, max_blocks), scratch_block, dtype=i64,
                                       device=device)  # [max_batch, max_blocks]
        self.hidden = torch.zeros(max_batch, model.config.hidden_size, dtype=model.dtype, device=device)
        cfg = model.config
        group_p2 = 1 << (cfg.num_heads // cfg.num_kv_heads - 1).bit_length()
        self.plans: dict[int, TritonPlan] = {}
        for size in self.sizes:
            plan = TritonPlan(positions=self.positions[:size], slot_mapping=self.slots[:size],
                              block_tables=self.block_tables[:size], query_start_loc=list(range(size + 1)),
                              block_size=block_size, rows=DECODE_ROWS)
            plan.tiles_for(max(DECODE_ROWS, group_p2) // group_p2)  # built now: no host copies inside a capture
            self.plans[size] = plan
        self.graphs: dict[int, Any] = {}
        if capture:
            self._capture()

    def fits(self, batch: AttentionBatch) -> bool:
        return (batch.num_seqs <= self.max_batch and batch.block_tables.shape[1] <= self.max_blocks
                and batch.query_start_loc == list(range(batch.num_seqs + 1)))

    def run(self, batch: AttentionBatch, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids: [B] of a step that `fits` -> hidden states [B, hidden]."""
        n = batch.num_seqs
        size = next(s for s in self.sizes if s >= n)
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(batch.positions)
        self.slots[:n].copy_(batch.slot_mapping)
        self.block_tables[:n, :batch.block_tables.shape[1]].copy_(batch.block_tables)
        self._pad(n, size)
        if self.graphs:
            self.graphs[size].replay()
        else:
            self._forward(size)
        return self.hidden[:n]

    def _pad(self, start: int, end: int) -> None:
        """Rows start..end-1: token 0 at position 0 of the scratch block."""
        self.input_ids[start:end] = 0
        self.positions[start:end] = 0
        self.slots[start:end] = self.scratch_slot
        self.block_tables[start:end, 0] = self.scratch_block

    def _forward(self, size: int) -> None:
        hidden = self.model.forward(self.input_ids[:size], self.positions[:size], self.kv_caches, self.backend,
                                    self.plans[size])  # [size, hidden]
        self.hidden[:size].copy_(hidden)

    def _capture(self) -> None:
        """One graph per size, largest first, all in one memory pool; every row is padding meanwhile."""
        self._pad(0, self.max_batch)
        pool = None
        for size in reversed(self.sizes):
            self._forward(size)  # warm-up: compiles the kernels and settles the allocator outside the capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._forward(size)
            pool = graph.pool()
            self.graphs[size] = graph
        torch.cuda.synchronize()
