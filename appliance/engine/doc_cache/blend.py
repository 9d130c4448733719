"""Tensor work of the document cache: take a chunk's KV out of a request's blocks, put it into another
request's blocks at new positions, and choose which reused tokens to recompute (blend).

Keys are stored before RoPE: `extract` un-rotates them from the positions they were computed at, and
`fill` rotates them to the positions they take in the new prompt (float32 tables; rotations compose).
"""

from __future__ import annotations

import torch

from appliance.engine.doc_cache.layout import ChunkSpan
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
                   frontier: int, layers: int) -> torch.Tensor:
        """Run the first `layers` layers (>= 2: the first layer's KV does not depend on context, so it cannot
        deviate) densely over the whole prompt; return, per position, how far the KV in the request's blocks
        (reused) is from the true KV at the last of those layers ([T] float32, zero before `frontier`), after
        overwriting those layers' KV from `frontier` on with the true values."""
        device = self.model.device
        t, bs = len(token_ids), self.block_size
        num_blocks = -(-t // bs)
        like = self.kv_caches[0][0]
        shape = (num_blocks, bs, *like.shape[2:])
        scratch = [(like.new_empty(shape), like.new_empty(shape)) for _ in range(min(layers, len(self.kv_caches)))]
        positions = torch.arange(t, device=device)
        batch = AttentionBatch([0, t], [t], positions, positions, torch.arange(num_blocks, device=device)[None], bs)
        ids = torch.tensor(token_ids, dtype=torch.int64, device=device)
        self.model.run_layers(ids, positions, scratch, backend, backend.plan(batch))
        tail = torch.arange(frontier, t)
        slots = request_slots(block_table, tail, bs).to(device)
        deviation = torch.zeros(t)
        for layer, (sk, sv) in enumerate(scratch):
            k_cache, v_cache = self.kv_caches[layer]
            kvh, dim = k_cache.shape[2:]
            true_k, true_v = sk.view(-1, kvh, dim)[frontier:t], sv.view(-1, kvh, dim)[frontier:t]  # [n, KVH, D]
            if layer == len(scratch) - 1:
                k_old, v_old = k_cache.view(-1, kvh, dim)[slots], v_cache.view(-1, kvh, dim)[slots]
                gap = (true_k.float() - k_old.float()).square().sum((1, 2)) \
                    + (true_v.float() - v_old.float()).square().sum((1, 2))  # [n]
                deviation[frontier:] = gap.cpu()
            k_cache.view(-1, kvh, dim).index_copy_(0, slots, true_k)
            v_cache.view(-1, kvh, dim).index_copy_(0, slots, true_v)
        return deviation
