"""Tensor work of the document cache: take a chunk's KV out of a request's blocks, put it into another
request's blocks at new positions, and choose which reused tokens to recompute (blend).

Keys are stored before RoPE: `extract` un-rotates them from the positions they were computed at, and
`fill` rotates them to the positions they take in the new prompt (float32 tables; rotations compose).
"""

from __future__ import annotations

import torch

from appliance.engine.doc_cache.layout import ChunkSpan
from appliance.engine.doc_cache.relevance import question_attention
from appliance.engine.doc_cache.tier import ChunkEntry
from appliance.engine.model import CausalLM, KVPair
from kernels.base import AttentionBackend, AttentionBatch
from kernels.rope import RotaryEmbedding, apply_rotary, inverse_tables


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

    def fill(self, backend: AttentionBackend, block_table: list[int], chunks: list[tuple[ChunkSpan, ChunkEntry]]
             ) -> None:
        """Write each chunk's KV at its span's positions in every layer, through the backend's `write_rotated`
        (a fused kernel on GPUs)."""
        for span, entry in chunks:
            positions = torch.arange(span.start, span.end, device=self.model.device)
            slots = request_slots(block_table, positions.cpu(), self.block_size).to(self.model.device)
            cos, sin = self.rope.tables(positions)
            for layer, (k_cache, v_cache) in enumerate(self.kv_caches):
                backend.write_rotated(k_cache, v_cache, entry.k[layer], entry.v[layer], slots, cos, sin)

    @torch.inference_mode()
    def deviations(self, backend: AttentionBackend, token_ids: list[int], block_table: list[int],
                   frontier: int, layers: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the first `layers` layers (>= 2: the first layer's KV does not depend on context, so it cannot
        deviate) over the prompt from `frontier` on, in the request's own blocks: a continued prefill (the KV
        before `frontier` is exact in those layers), which replaces those layers' reused KV by the true one.

        Returns the deviation per position ([T] float32, zero before `frontier`): how far the reused KV at the
        last of those layers was from the true one; and the residual stream leaving those layers
        ([T - frontier, hidden] float32), from which recomputed positions resume (`model.Resume`)."""
        ids = torch.tensor(token_ids[frontier:], dtype=torch.int64, device=self.model.device)
        deviation, hidden = self._measure(backend, len(token_ids), block_table, torch.arange(frontier, len(token_ids)),
                                          0, layers, ids)
        return deviation.clamp_min(0), hidden

    @torch.inference_mode()
    def refine(self, backend: AttentionBackend, token_ids: list[int], block_table: list[int], positions: list[int],
               hidden: torch.Tensor, first: int, layers: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Carry only `positions` (ascending; `hidden` [P, hidden] their residual stream entering layer `first`)
        on through layers `first`..`layers - 1`, attending with their true positions to every key (the others'
        stay reused in those layers): CacheBlend's gradual filtering, the deviations of a few tokens measured
        deeper at a fraction of a dense pass's cost.

        Returns the deviation per position at the last of those layers ([T] float32, -1 where not carried, so
        never chosen over a carried one) and the residual stream of `positions` leaving them ([P, hidden])."""
        return self._measure(backend, len(token_ids), block_table, torch.tensor(positions), first, layers, hidden)

    @torch.inference_mode()
    def question_relevance(self, backend: AttentionBackend, num_tokens: int, block_table: list[int],
                           question_start: int, hidden: torch.Tensor, first: int, layer: int) -> torch.Tensor:
        """How much the question attends to each earlier position at `layer` (`relevance.question_attention`).

        The question is `prompt[question_start:num_tokens]` and `hidden` ([Q, hidden] float32) its residual
        stream entering layer `first` (<= `layer`); it is carried alone through layers `first`..`layer - 1`
        over the cache as it stands (reused KV where nothing was recomputed), its K/V written there (the
        prefill that follows computes them again). Returns [num_tokens] float32, zero from `question_start` on."""
        device = self.model.device
        positions = torch.arange(question_start, num_tokens, device=device)
        if layer > first:
            slots = request_slots(block_table, positions.cpu(), self.block_size).to(device)
            table = torch.tensor(block_table, dtype=torch.int64, device=device)[None]
            batch = AttentionBatch([0, len(positions)], [num_tokens], positions, slots, table, self.block_size)
            hidden = self.model.continue_layers(hidden, positions, first, self.kv_caches[first:layer], backend,
                                                backend.plan(batch))
        q, own_k, _ = self.model.attention_inputs(hidden, positions, layer)  # [Q, H, D], [Q, KVH, D]
        k_cache = self.kv_caches[layer][0]
        context = request_slots(block_table, torch.arange(question_start), self.block_size).to(device)
        context_k = k_cache.view(-1, *k_cache.shape[2:])[context]  # [P, KVH, D]
        relevance = torch.zeros(num_tokens)
        relevance[:question_start] = question_attention(q, context_k, own_k, q.shape[-1] ** -0.5).cpu()
        return relevance

    def _measure(self, backend: AttentionBackend, t: int, block_table: list[int], positions: torch.Tensor,
                 first: int, layers: int, entering: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run `positions` ([P] int64) of a T-token prompt through layers `first`..`layers - 1` from `entering`
        (token ids [P] when `first` is 0, else the residual stream [P, hidden]); their K/V replace the cached.
        -> (deviation [T], -1 elsewhere; residual stream [P, hidden] leaving the last layer)."""
        device = self.model.device
        slots = request_slots(block_table, positions, self.block_size).to(device)
        k_cache, v_cache = self.kv_caches[layers - 1]
        kvh, dim = k_cache.shape[2:]
        k_reused, v_reused = k_cache.view(-1, kvh, dim)[slots], v_cache.view(-1, kvh, dim)[slots]  # copies
        table = torch.tensor(block_table, dtype=torch.int64, device=device)[None]
        batch = AttentionBatch([0, len(positions)], [t], positions.to(device), slots, table, self.block_size)
        caches, plan = self.kv_caches[first:layers], backend.plan(batch)
        if first == 0:
            hidden = self.model.run_layers(entering, batch.positions, caches, backend, plan)
        else:
            hidden = self.model.continue_layers(entering, batch.positions, first, caches, backend, plan)
        k_true, v_true = k_cache.view(-1, kvh, dim)[slots], v_cache.view(-1, kvh, dim)[slots]  # [P, KVH, D]
        deviation = torch.full((t,), -1.0)
        deviation[positions] = ((k_true.float() - k_reused.float()).square().sum((1, 2))
                                + (v_true.float() - v_reused.float()).square().sum((1, 2))).cpu()
        return deviation, hidden
