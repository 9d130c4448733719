"""Runs one scheduled batch through the model: builds the flat inputs, calls the model, samples.

The runner owns the KV cache tensors and never decides anything: which requests run, and how many
tokens each, comes from the scheduler.
"""

from __future__ import annotations

import torch

from appliance.engine.decode_graphs import DecodeGraphs
from appliance.engine.model import CausalLM, Resume
from appliance.engine.request import Request
from appliance.engine.sampling import Sampler
from kernels.base import AttentionBackend, AttentionBatch


class ModelRunner:
    def __init__(self, model: CausalLM, backend: AttentionBackend, num_blocks: int, block_size: int,
                 decode_graphs: str = "off", max_batch: int = 0, max_blocks: int = 0) -> None:
        """`decode_graphs`: `capture` (CUDA graphs for decode steps of up to `max_batch` sequences of up to
        `max_blocks` blocks), `eager` (the same static-buffer path without capture: tests) or `off`."""
        cfg = model.config
        self.model = model
        self.backend = backend
        self.block_size = block_size
        scratch = 0 if decode_graphs == "off" else 1  # block `num_blocks`: where padded graph rows write
        shape = (num_blocks + scratch, block_size, cfg.num_kv_heads, cfg.head_dim)
        self.kv_caches = [(torch.zeros(shape, dtype=model.dtype, device=model.device),
                           torch.zeros(shape, dtype=model.dtype, device=model.device))
                          for _ in range(cfg.num_layers)]
        self.sampler = Sampler()
        self.graphs = None if decode_graphs == "off" else DecodeGraphs(
            model, self.kv_caches, block_size, num_blocks, max_batch, max_blocks, capture=decode_graphs == "capture")

    @torch.inference_mode()
    def execute(self, items: list[tuple[Request, int]]) -> list[int | None]:
        """Compute the next `n` tokens of each request; return the sampled next token of each request whose
        work reaches its end (None for requests still in the middle of their prompt, and for encode jobs)."""
        batch, input_ids = self._prepare(items)
        resume = self._resume(items, batch)
        if self.graphs is not None and resume is None and self.graphs.fits(batch):
            hidden = self.graphs.run(batch, input_ids)  # [B, hidden]: one token per sequence
        else:
            plan = self.backend.plan(batch)
            hidden = self.model.forward(input_ids, batch.positions, self.kv_caches, self.backend, plan,
                                        resume)  # [T, hidden]
        rows = [i for i, (req, n) in enumerate(items) if n == req.num_new_tokens and not req.prefill_only]
        sampled: list[int | None] = [None] * len(items)
        if rows:
            last = torch.tensor([batch.query_start_loc[i + 1] - 1 for i in rows])
            logits = self.model.logits(hidden[last])  # [len(rows), V]
            reqs = [items[i][0] for i in rows]
            tokens = self.sampler(logits, [r.params for r in reqs], [r.generator for r in reqs],
                                  [r.output_token_ids for r in reqs])
            for i, token in zip(rows, tokens, strict=True):
                sampled[i] = token
        return sampled

    def _resume(self, items: list[tuple[Request, int]], batch: AttentionBatch) -> Resume | None:
        """Which rows enter past the first layers (blend recomputes whose early layers the selection pass ran)."""
        rows: list[int] = []  # flat-batch rows that resume, and their residual streams
        hidden: list[torch.Tensor] = []
        layers: set[int] = set()
        early: list[int] = []  # the other rows, and their items
        others: list[tuple[Request, int]] = []
        for i, (req, n) in enumerate(items):
            span = range(batch.query_start_loc[i], batch.query_start_loc[i + 1])
            if req.resume_hidden is None:
                early.extend(span)
                others.append((req, n))
            else:
                rows.extend(span)
                hidden.append(req.resume_hidden[:n])
                layers.add(req.resume_layer)
        if not rows:
            return None
        assert len(layers) == 1, "one engine resumes at one layer"
        device = self.model.device
        return Resume(layers.pop(), torch.tensor(rows, device=device), torch.cat(hidden),
                      torch.tensor(early, dtype=torch.int64, device=device),
                      self.backend.plan(self._prepare(others)[0]) if others else None)

    def _prepare(self, items: list[tuple[Request, int]]) -> tuple[AttentionBatch, torch.Tensor]:
        bs = self.block_size
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        starts = [0]
        seq_lens = []
        max_blocks = max(len(req.block_table) for req, _ in items)
        tables = torch.zeros(len(items), max_blocks, dtype=torch.int64)
        for i, (req, n) in enumerate(items):
            table = req.block_table
            pos = req.positions_to_compute(n)  # contiguous, or a sparse set after a document-cache fill
            ids.extend(req.token_ids[p] for p in pos)
            positions.extend(pos)
            slots.extend(table[p // bs] * bs + p % bs for p in pos)
            starts.append(starts[-1] + n)
            seq_lens.append(pos[-1] + 1)
            tables[i, :len(table)] = torch.tensor(table, dtype=torch.int64)
        device = self.model.device
        batch = AttentionBatch(
            query_start_loc=starts,
            seq_lens=seq_lens,
            positions=torch.tensor(positions, dtype=torch.int64, device=device),
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
            block_tables=tables.to(device),
            block_size=bs,
        )
        return batch, torch.tensor(ids, dtype=torch.int64, device=device)
