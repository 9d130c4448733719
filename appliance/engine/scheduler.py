"""Decides, each step, which requests run and how many of their tokens (never touches tensors).

One token budget per step is shared by decode tokens and prefill chunks (chunked prefill) of many
requests (continuous batching). A request served from the document cache is admitted with blocks for its
whole prompt and listed in `to_fill`: the engine writes the reused KV before it computes anything.
Running requests go first, in arrival order; when the KV pool is full
the most recent running request is preempted (its blocks freed, recomputed later from its prefix).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from appliance.engine.block_manager import BlockManager
from appliance.engine.request import Request, RequestStatus


@dataclass
class ScheduledBatch:
    """Requests and how many new tokens of each to compute this step, in batch order."""

    items: list[tuple[Request, int]] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    to_fill: list[Request] = field(default_factory=list)  # admitted this step; reused KV to write first

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.items)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.bm = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []

    def add(self, req: Request) -> None:
        self.waiting.append(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.max_num_batched_tokens
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_new_tokens, budget)
            if n == 0:
                i += 1
                continue
            while not self.bm.allocate(req, n):
                victim = self.running.pop()
                self._preempt(victim)
                batch.preempted.append(victim)
                if victim is req:
                    break
            else:
                batch.items.append((req, n))
                budget -= n
                i += 1
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs and not batch.preempted:
            req = self.waiting[0]
            hits = self.bm.lookup_prefix(req)
            rest = req.num_tokens - req.num_computed_tokens - len(hits) * self.bm.block_size
            fill = req.layout is not None
            n = 0 if fill else min(rest, budget)
            if not self.bm.allocate(req, rest if fill else n, hits):
                break
            if req.num_preemptions == 0:
                self.bm.record_lookup(req, len(hits))
                req.num_cached_tokens = len(hits) * self.bm.block_size
            self.waiting.popleft()
            req.status = RequestStatus.RUNNING
            if req.first_scheduled_time is None:
                req.first_scheduled_time = time.monotonic()
            self.running.append(req)
            if fill:
                req.awaiting_fill = True
                batch.to_fill.append(req)
            else:
                batch.items.append((req, n))
                budget -= n
        return batch

    def update(self, batch: ScheduledBatch, sampled: list[int | None]) -> None:
        """Advance counters after the runner computed `batch`; append each sampled token."""
        for (req, n), token in zip(batch.items, sampled, strict=True):
            req.advance(n)
            self.bm.commit_full_blocks(req)
            if token is not None:
                req.token_ids.append(token)

    def finish(self, req: Request, reason: str) -> None:
        """Remove a request (done, stopped or aborted) and release its blocks."""
        if req.status is RequestStatus.RUNNING:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        req.status = RequestStatus.FINISHED
        req.finish_reason = reason
        self.bm.free(req)

    def _preempt(self, req: Request) -> None:
        """Free the request's blocks; it restarts from its prefix later (a document-cache request as plain
        prefill: its chunks are no longer pinned)."""
        self.bm.free(req)
        req.num_computed_tokens = 0
        req.pending_positions = []
        req.resume_hidden = None
        req.layout = None
        req.reuse_from = None
        req.num_preemptions += 1
        req.status = RequestStatus.WAITING
        self.waiting.appendleft(req)
