"""Tensor work of the document cache: take a chunk's KV out of a request's blocks, put it into another
request's blocks at new positions, and measure what blend chooses by (KV deviation, the question's attention).
The forward passes themselves run in the model runner, as work items of a step.

Keys are stored before RoPE: `extract` un-rotates them from the positions they were computed at, and
`fill` rotates them to the positions they take in the new prompt (float32 tables; rotations compose).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from appliance.engine.doc_cache.layout import ChunkSpan
from appliance.engine.doc_cache.relevance import question_attention
from appliance.engine.doc_cache.tier import ChunkEntry
from appliance.engine.model import CausalLM, KVPair
from kernels.base import AttentionBackend
from kernels.rope import RotaryEmbedding, apply_rotary, inverse_tables

if TYPE_CHECKING:
    from appliance.engine.fused_decode import FusedDecode


def request_slots(block_table: list[int], positions: torch.Tensor, block_size: int) -> torch.Tensor:
    """Flat cache slots of `positions` [n] in a request's blocks -> [n] int64."""
    table = torch.tensor(block_table, dtype=torch.int64)
    return table[positions // block_size] * block_size + positions % block_size


class KVMover:
    """Moves position-free chunk KV between a paged cache (`kv_caches`, one pair per layer) and entries."""

    def __init__(self, model: CausalLM, kv_caches: list[KVPair], block_size: int) -> None:
        cfg = model.config
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        scaling = dict(cfg.rope_scaling) if cfg.rope_scaling else None
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.max_position, cfg.rope_theta, scaling, torch.float32,
                                    model.device)
        self.fused: FusedDecode | None = None  # on a CPU, its kernel writes chunks once built (LLMEngine attaches it)

    def extract(self, block_table: list[int], span: ChunkSpan, key: str, doc_ids: frozenset[str]) -> ChunkEntry:
        """The KV of `span` as computed in a request's blocks, keys un-rotated -> entry of [layers, n, KVH, D]."""
        positions = torch.arange(span.start, span.end)
        slots = request_slots(block_table, positions, self.block_size).to(self.model.device)
        cos, sin = inverse_tables(*self.rope.tables(positions.to(self.model.device)))
        ks, vs = [], []
        for k_cache, v_cache in self.kv_caches:
            kvh, dim = k_cache.shape[2:]
            k = k_cache.view(-1, kvh, dim)[slots]  # [n, KVH, D] rotated to span positions
            ks.append(apply_rotary(k.float(), cos, sin).to(k_cache.dtype))
            vs.append(v_cache.view(-1, kvh, dim)[slots])
        return ChunkEntry(key, torch.stack(ks), torch.stack(vs), doc_ids)

    def fill(self, backend: AttentionBackend, block_table: list[int], chunks: list[tuple[ChunkSpan, ChunkEntry]],
             layers: range | None = None) -> None:
        """Write each chunk's KV at its span's positions in `layers` (None: every layer), through the backend's
        `write_rotated` (a fused kernel on GPUs) or, on a CPU once built, the fused layer's kernel (the layers in
        one call)."""
        layers = range(len(self.kv_caches)) if layers is None else layers
        caches = self.kv_caches[layers.start:layers.stop]
        fused = self.fused if self.fused is not None and self.fused.ready else None
        for span, entry in chunks:
            positions = torch.arange(span.start, span.end, device=self.model.device)
            slots = request_slots(block_table, positions.cpu(), self.block_size).to(self.model.device)
            cos, sin = self.rope.tables(positions)
            k, v = entry.k[layers.start:layers.stop], entry.v[layers.start:layers.stop]  # [len(layers), n, KVH, D]
            if fused is not None and fused.fill(caches, k, v, slots, cos, sin):
                continue
            for (k_cache, v_cache), k_layer, v_layer in zip(caches, k, v, strict=True):
                backend.write_rotated(k_cache, v_cache, k_layer, v_layer, slots, cos, sin)

    def kv_at(self, layer: int, block_table: list[int], positions: list[int]) -> KVPair:
        """A copy of the K and V at `positions` of a request's blocks in `layer` -> ([n, KVH, D], [n, KVH, D])."""
        slots = request_slots(block_table, torch.tensor(positions), self.block_size).to(self.model.device)
        k_cache, v_cache = self.kv_caches[layer]
        kvh, dim = k_cache.shape[2:]
        return k_cache.view(-1, kvh, dim)[slots], v_cache.view(-1, kvh, dim)[slots]

    @staticmethod
    def deviation(before: KVPair, after: KVPair) -> torch.Tensor:
        """How far each position's K/V moved ([n] float32 on the CPU): blend's measure of how wrong the reused KV
        was, once the selection pass has written the true KV over it."""
        (k0, v0), (k1, v1) = before, after
        return ((k1.float() - k0.float()).square().sum((1, 2)) + (v1.float() - v0.float()).square().sum((1, 2))).cpu()

    @torch.inference_mode()
    def question_relevance(self, hidden: torch.Tensor, positions: list[int], question_start: int, layer: int,
                           block_table: list[int]) -> torch.Tensor:
        """How much the question attends to each earlier position at `layer` (`relevance.question_attention`).

        `hidden` ([P, hidden] float32) is the residual stream entering `layer` of the carried `positions`
        (ascending; the question, `question_start` to the prompt's end, last of them); their keys at `layer`
        come from it, every other earlier position's key from the request's blocks as they stand (reused KV).
        Returns [num_tokens] float32, zero from `question_start` on."""
        device = self.model.device
        num_tokens = positions[-1] + 1
        q, k, _ = self.model.attention_inputs(hidden, torch.tensor(positions, device=device), layer)  # [P, H|KVH, D]
        asked = num_tokens - question_start
        context_k, _ = self.kv_at(layer, block_table, list(range(question_start)))  # [question_start, KVH, D]
        before = torch.tensor(positions[:-asked], dtype=torch.int64, device=device)
        context_k[before] = k[:-asked]
        relevance = torch.zeros(num_tokens)
        relevance[:question_start] = question_attention(q[-asked:], context_k, k[-asked:], q.shape[-1] ** -0.5).cpu()
        return relevance
