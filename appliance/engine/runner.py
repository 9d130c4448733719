"""Runs one scheduled batch through the model: builds the flat inputs, calls the model, samples.

The runner owns the KV cache tensors and never decides anything: which requests run, which of their
positions and through which layers, comes from the scheduler (`WorkItem`s).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from appliance.engine.compiled_decode import CompiledDecode, is_decode_step
from appliance.engine.decode_graphs import DecodeGraphs
from appliance.engine.fused_decode import FusedDecode
from appliance.engine.logprobs import TokenLogprobs, rows_to_logprobs
from appliance.engine.model import CausalLM, LayerCall, LayerSpan
from appliance.engine.sampler import Sampled, Sampler
from appliance.engine.work import WorkItem
from kernels.base import AttentionBackend, AttentionBatch

if TYPE_CHECKING:
    from appliance.engine.background_build import BackgroundBuild
    from appliance.engine.doc_cache.connector import DocCacheConnector


@dataclass
class StepSamples:
    """What a step drew, on the host: per item its sampled token (None where it samples nothing) and, where its
    request asks, the token's log-probabilities; per item index, the prompt positions it scored."""

    tokens: list[int | None]
    logprobs: list[TokenLogprobs | None]
    prompt_logprobs: dict[int, list[TokenLogprobs]] = field(default_factory=dict)


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
        self.connector: DocCacheConnector | None = None  # the document cache's worker side (LLMEngine attaches it)
        self.compiled: CompiledDecode | None = None  # compiled decode layers on a CPU (LLMEngine attaches them)
        self.fused: FusedDecode | None = None  # the fused decode layer on a CPU (LLMEngine attaches it too)

    @property
    def builds(self) -> list[BackgroundBuild]:
        """The background builds attached (compiled decode, the fused layer), ready or not."""
        return [b for b in (self.compiled, self.fused) if b is not None]

    def wait_for_builds(self) -> float | None:
        """Join the background builds attached (benchmarks measure steady state, not a build); the longest one's
        seconds, None when there is none."""
        builds = self.builds
        for build in builds:
            build.wait()
        return max((b.compile_seconds for b in builds), default=None)

    def execute(self, items: list[WorkItem]) -> StepSamples:
        """Compute every item's positions through its layers in one forward pass; return what each item that
        `samples` drew: the step's one transfer from the device (more only where log-probabilities are asked)."""
        sampled = self.compute(items)
        sampling = [i for i, item in enumerate(items) if item.samples]
        tokens: list[int | None] = [None] * len(items)
        for i, token in zip(sampling, sampled.tokens.tolist(), strict=True):
            tokens[i] = token
        logprobs: list[TokenLogprobs | None] = [None] * len(items)
        if sampled.logprobs is not None and sampled.logprob_ids is not None:
            rows = [sampling[r] for r in sampled.logprob_rows]
            widths = [items[i].request.params.logprobs or 0 for i in rows]
            for i, entry in zip(rows, rows_to_logprobs(sampled.logprobs, sampled.logprob_ids, widths), strict=True):
                logprobs[i] = entry
        prompt = {i: rows_to_logprobs(values, ids, [items[i].request.params.prompt_logprobs or 0] * len(values))
                  for i, (values, ids) in sampled.prompt_logprobs.items()}
        return StepSamples(tokens, logprobs, prompt)

    @torch.inference_mode()
    def compute(self, items: list[WorkItem]) -> Sampled:
        """The step's device work: the forward pass and the sampling -> the draws of the sampling items (in item
        order) on the model's device. The connector's worker side, when attached, runs before (writing reused
        KV) and after (reading what its items produced, saving encoded KV)."""
        batch, input_ids = self._prepare(items)
        if self.connector is not None:
            self.connector.before_forward(items)
        scoring = [i for i, item in enumerate(items) if item.request.params.prompt_logprobs is not None]
        if self.graphs is not None and self.graphs.fits(batch) and all(_whole(item) for item in items) \
                and not scoring:
            hidden = self.graphs.run(batch, input_ids)  # [B, hidden]: one token per sequence, normed
            leaving = None
        else:
            x = self.model.embed_tokens(input_ids)  # [T, hidden] float32
            for item, span in zip(items, self._rows(batch), strict=True):
                if item.entering is not None:
                    x[span] = item.entering
            leaving = self.model.run_layers(x, batch.positions, self.kv_caches, self.backend,
                                            self._spans(items, batch), self._layer_call(items))  # [T, hidden]
            hidden = leaving
        if self.connector is not None:
            self.connector.after_forward(items, leaving, self._rows(batch))
        prompt_logprobs = {i: scored for i in scoring
                           if leaving is not None and (scored := self._score_prompt(items[i], leaving, batch, i))}
        sampling = [i for i, item in enumerate(items) if item.samples]
        if not sampling:
            return Sampled(torch.empty(0, dtype=torch.int64, device=self.model.device), [],
                           prompt_logprobs=prompt_logprobs)
        last = torch.tensor([batch.query_start_loc[i + 1] - 1 for i in sampling], device=self.model.device)
        rows = hidden[last] if leaving is None else self.model.final_norm(hidden[last])
        fused = self.fused if self.fused is not None and self.fused.fits(len(sampling)) else None
        logits = fused.logits(rows) if fused is not None else self.model.logits(rows)  # [len(sampling), V]
        reqs = [items[i].request for i in sampling]
        sampled = self.sampler(logits, [r.params for r in reqs], [r.output_token_ids for r in reqs],
                               [r.grammar for r in reqs])
        sampled.prompt_logprobs = prompt_logprobs
        return sampled

    def _layer_call(self, items: list[WorkItem]) -> LayerCall | None:
        """How this step's layers run where its spans name nothing (`_span`): a decode step through the compiled
        layers once built; anything else (None) eagerly."""
        if is_decode_step(items) and self.compiled is not None and self.compiled.ready:
            return self.compiled
        return None

    def _score_prompt(self, item: WorkItem, leaving: torch.Tensor, batch: AttentionBatch, index: int
                      ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The log-probabilities of the prompt tokens this item's positions predict (position p scores token
        p + 1, the model's own distribution) -> (values, ids) [P, 1 + K] as `Sampled.logprobs`, or None."""
        req = item.request
        picked = [j for j, p in enumerate(item.positions) if p + 1 < req.num_prompt_tokens]
        if not picked:
            return None
        start = batch.query_start_loc[index]
        device = self.model.device
        rows = torch.tensor([start + j for j in picked], device=device)
        logprobs = self.model.logits(self.model.final_norm(leaving[rows])).log_softmax(dim=-1)  # [P, V]
        targets = torch.tensor([req.token_ids[item.positions[j] + 1] for j in picked], device=device)[:, None]
        best_values, best_ids = logprobs.topk(req.params.prompt_logprobs or 1, dim=-1)  # [P, K]
        return (torch.cat([logprobs.gather(1, targets), best_values], dim=1),
                torch.cat([targets, best_ids], dim=1))

    @staticmethod
    def _rows(batch: AttentionBatch) -> list[slice]:
        """Each item's rows of the flat batch."""
        starts = batch.query_start_loc
        return [slice(starts[i], starts[i + 1]) for i in range(len(starts) - 1)]

    def _spans(self, items: list[WorkItem], batch: AttentionBatch) -> list[LayerSpan]:
        """The layer spans of a batch: between two layers where some item enters or leaves, the items running
        those layers, their rows and plan (every row and the whole batch's plan where all items run)."""
        num_layers = self.model.config.num_layers
        ranges = [(item.first_layer, num_layers if item.last_layer is None else item.last_layer) for item in items]
        bounds = sorted({b for r in ranges for b in r})
        rows = self._rows(batch)
        spans: list[LayerSpan] = []
        for first, last in zip(bounds, bounds[1:], strict=False):
            active = [i for i, (a, b) in enumerate(ranges) if a <= first and last <= b]
            if len(active) == len(items):  # at most one span: where every item's layer range overlaps
                spans.append(self._span(first, last, None, batch))
            elif active:
                idx = torch.cat([torch.arange(rows[i].start, rows[i].stop) for i in active]).to(self.model.device)
                sub, _ = self._prepare([items[i] for i in active])
                spans.append(self._span(first, last, idx, sub))
        return spans

    def _span(self, first: int, last: int, rows: torch.Tensor | None, batch: AttentionBatch) -> LayerSpan:
        """A span of `batch`'s rows: through the fused layer when it is built and they are few enough (decode
        tokens, a small chunk of a prompt or of a document-cache phase, or both), else by the step's call."""
        if self.fused is not None and self.fused.fits(len(batch.positions)):
            return LayerSpan(first, last, rows, self.fused.plan(batch), self.fused)
        return LayerSpan(first, last, rows, self.backend.plan(batch))

    def _prepare(self, items: list[WorkItem]) -> tuple[AttentionBatch, torch.Tensor]:
        bs = self.block_size
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        starts = [0]
        seq_lens = []
        max_blocks = max(len(item.request.block_table) for item in items)
        tables = torch.zeros(len(items), max_blocks, dtype=torch.int64)
        for i, item in enumerate(items):
            req, pos = item.request, item.positions  # contiguous, or a sparse set (the document cache's)
            table = req.block_table
            ids.extend(req.token_ids[p] for p in pos)
            positions.extend(pos)
            slots.extend(table[p // bs] * bs + p % bs for p in pos)
            starts.append(starts[-1] + len(pos))
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


def _whole(item: WorkItem) -> bool:
    return item.first_layer == 0 and item.last_layer is None
