"""Decides, each step, which requests run and which of their tokens (never touches tensors).

One token budget per step is shared by decode tokens and prefill chunks (chunked prefill) of many requests
(continuous batching); requests that decode always get their token, and while any does, the work of requests
served from the document cache (small: most of their prompt is reused) is held to `decode_step_tokens` a step
with the decode tokens, so that the streams' pace holds while such requests arrive. Requests served from the
document cache go through its connector (vLLM v1's scheduler-side seam): one waits in the queue until the
connector has its reused KV in memory, is admitted with blocks for its whole prompt, and then runs the work the
connector lists for it (its selection pass, then the tokens to recompute) within the same budget, beside the
other requests' tokens. Running requests go first, in arrival order; when the KV pool is full the most recent
running request is preempted (its blocks freed, recomputed later from its prefix).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from appliance.engine.block_manager import BlockManager
from appliance.engine.request import Request, RequestStatus
from appliance.engine.work import WorkItem

if TYPE_CHECKING:
    from appliance.engine.doc_cache.connector import DocCacheConnector


@dataclass
class ScheduledBatch:
    """The step's work items, in batch order, and the requests preempted to make room."""

    items: list[WorkItem] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(item.num_tokens for item in self.items)


@dataclass
class StepBudget:
    """What a step may still compute: `tokens` in all; of them, one for each of the `decodes` decode tokens not
    yet scheduled (prompt work never takes those); and, while requests decode, `held` for the document cache's
    work (None: no hold)."""

    MIN_HELD = 8  # document-cache work a step carries beside decoding requests however many there are

    tokens: int
    decodes: int
    held: int | None = None

    @classmethod
    def start(cls, tokens: int, decodes: int, hold: int) -> StepBudget:
        """A step's budget: `tokens` in all, `decodes` decode tokens to come, and while any, the document cache's
        work held with them to `hold` (0: not held), at least MIN_HELD."""
        return cls(tokens, decodes, max(hold - decodes, cls.MIN_HELD) if decodes and hold else None)

    def allowance(self, decoding: bool, cached: bool) -> int:
        """What a request's next work may cost: all that is left for a decode token, else what the decode
        tokens to come leave (and at most `held` for document-cache work)."""
        if decoding:
            return self.tokens
        left = self.tokens - self.decodes
        return min(left, self.held) if cached and self.held is not None else left

    def spend(self, cost: int, decoding: bool, cached: bool) -> None:
        self.tokens -= cost
        if decoding:
            self.decodes -= 1
        elif cached and self.held is not None:
            self.held -= cost


class Scheduler:
    def __init__(self, block_manager: BlockManager, connector: DocCacheConnector, max_num_seqs: int,
                 max_num_batched_tokens: int, num_layers: int, decode_step_tokens: int = 0) -> None:
        """`decode_step_tokens`: while some request decodes, the step's decode tokens and its document-cache work
        together stay within it (that work at least StepBudget.MIN_HELD); 0: no hold. Other prompts' chunks take
        what `max_num_batched_tokens` leaves."""
        self.bm = block_manager
        self.connector = connector
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.decode_step_tokens = decode_step_tokens
        self.num_layers = num_layers
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []

    def add(self, req: Request) -> None:
        self.waiting.append(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        for job in self.connector.poll():  # disk loads that failed: encode those chunks instead
            self.add(job)
        batch = ScheduledBatch()
        decodes = sum(1 for req in self.running if self._decoding(req))
        budget = StepBudget.start(self.max_num_batched_tokens, decodes, self.decode_step_tokens)
        i = 0
        while i < len(self.running) and budget.tokens > 0:
            req = self.running[i]
            decoding, cached = self._decoding(req), self.connector.owns(req)
            item = self._next_work(req, budget.allowance(decoding, cached))
            if item is None:
                i += 1
                continue
            grow = 0 if cached else item.num_tokens
            while not self.bm.allocate(req, grow):
                victim = self.running.pop()
                self._preempt(victim)
                batch.preempted.append(victim)
                if victim is req:
                    break
            else:
                batch.items.append(item)
                budget.spend(item.cost(self.num_layers), decoding, cached)
                i += 1
        if not batch.preempted:
            self._admit(batch, budget)
        return batch

    def _decoding(self, req: Request) -> bool:
        """Whether the request's next work is one decode token (its prompt done)."""
        return not self.connector.owns(req) and req.num_prompt_tokens <= req.num_computed_tokens == req.num_tokens - 1

    def _admit(self, batch: ScheduledBatch, budget: StepBudget) -> None:
        """Admit waiting requests in order while budget, sequences and blocks last; a request whose reused KV
        is not in memory yet keeps its place and lets the next ones by."""
        for req in list(self.waiting):
            if budget.tokens <= 0 or len(self.running) >= self.max_num_seqs:
                break
            if not self.connector.ready(req):
                continue
            hits = self.bm.lookup_prefix(req)
            rest = req.num_tokens - req.num_computed_tokens - len(hits) * self.bm.block_size
            whole = self.connector.owns(req)  # blocks for the whole prompt: the reused KV goes there
            allowance = budget.allowance(False, whole)
            if not self.bm.allocate(req, rest if whole else min(rest, allowance), hits):
                break
            if req.num_preemptions == 0:
                self.bm.record_lookup(req, len(hits))
                req.num_cached_tokens = len(hits) * self.bm.block_size
            self.waiting.remove(req)
            req.status = RequestStatus.RUNNING
            if req.first_scheduled_time is None:
                req.first_scheduled_time = time.monotonic()
            self.running.append(req)
            if whole:
                self.connector.admitted(req)
            item = self._next_work(req, allowance)
            if item is not None:
                batch.items.append(item)
                budget.spend(item.cost(self.num_layers), False, whole)

    def _next_work(self, req: Request, budget: int) -> WorkItem | None:
        """The request's next work within `budget`: the connector's while it owns the request, else its next
        tokens (the prompt's next chunk, or one decode token)."""
        if budget <= 0:
            return None
        if self.connector.owns(req):
            return self.connector.next_work(req, budget)
        n = min(req.num_tokens - req.num_computed_tokens, budget)
        if n <= 0:
            return None
        start = req.num_computed_tokens
        done = start + n == req.num_tokens
        return WorkItem(req, list(range(start, start + n)), samples=done and not req.prefill_only)

    def update(self, batch: ScheduledBatch, sampled: list[int | None]) -> None:
        """Advance counters after the runner computed `batch`; append each sampled token."""
        for item, token in zip(batch.items, sampled, strict=True):
            req = item.request
            if self.connector.owns(req):
                self.connector.advance(item)
            else:
                req.num_computed_tokens += item.num_tokens
            self.bm.commit_full_blocks(req)
            if token is not None:
                req.token_ids.append(token)

    def finish(self, req: Request, reason: str) -> None:
        """Remove a request (done, stopped or aborted) and release its blocks and document-cache state."""
        if req.status is RequestStatus.RUNNING:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        req.status = RequestStatus.FINISHED
        req.finish_reason = reason
        self.bm.free(req)
        self.connector.drop(req)

    def _preempt(self, req: Request) -> None:
        """Free the request's blocks; it restarts from its prefix later (a document-cache request as plain
        prefill: its chunks are no longer pinned)."""
        self.bm.free(req)
        self.connector.drop(req)
        req.num_computed_tokens = 0
        req.reuse_from = None
        req.num_preemptions += 1
        req.status = RequestStatus.WAITING
        self.waiting.appendleft(req)
