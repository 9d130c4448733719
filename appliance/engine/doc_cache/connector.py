"""The document cache's seam into the engine, after vLLM v1's KV connector: a scheduler side and a worker side.

Scheduler side (called by `Scheduler`): `add` registers a RAG request and starts what its chunks need (disk
reads on the loader thread, encode jobs); `ready` says whether its reused KV is in memory, so that it may be
admitted; `admitted` plans its work once it has blocks; `next_work` lists its next work item within the
step's token budget; `advance` records a step's work; `drop` forgets it (finished, aborted, preempted).

Worker side (called by `ModelRunner` around the forward pass): `before_forward` writes reused KV into an
admitted request's blocks, over its first steps (each step at least the layers its work runs, and a share of
the rest), and snapshots the KV a selection pass will measure; `after_forward` reads what the pass produced
(residual streams, KV deviations, the question's attention), moves the request to its next phase, and saves
the KV of finished encode jobs to the chunk tier.

A request's work, in phases (each a list of positions through a range of layers, run a budget's worth a step,
beside the other requests' tokens):
  reuse, or nothing reused:  compute (every non-reused position, every layer)
  blend, `deviation`:        dense (layers 0..D-1 from the frontier) [-> refine (carried, D..S-1)] -> compute
  blend, `query`/`mixed`:    dense [-> refine] -> question (the positions computed anyway, resume..Q-1) -> compute
where the compute phase's recomputed tokens enter at the layer the selection left them (`BlendConfig`).
When the compute phase is done the request is an ordinary one (it decodes) and the connector lets it go.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from appliance.engine.doc_cache.blend import KVMover
from appliance.engine.doc_cache.layout import ChunkSpan, PromptLayout
from appliance.engine.doc_cache.manager import DocCache
from appliance.engine.doc_cache.tier import ChunkEntry
from appliance.engine.model import KVPair
from appliance.engine.request import Request
from appliance.engine.work import WorkItem, rows_for_cost
from kernels.base import AttentionBackend


@dataclass(eq=False)
class Phase:
    """Positions (ascending) run through layers `first`..`last - 1` (`last` None: the whole model, sampling at
    the end); `entering` their residual stream at `first` when it is past 0; `measure` a layer whose KV
    deviation is measured for them. What they produce collects in `leaving` and `deviation`, chunk by chunk;
    `then` makes the next phase from one that has run (the compute phase has none: the prompt is then done)."""

    name: str
    positions: list[int]
    first: int
    last: int | None
    entering: torch.Tensor | None = None  # [len(positions), hidden] float32
    measure: int | None = None
    then: Callable[[Phase], Phase] | None = None
    handed: int = 0  # positions handed to steps so far
    leaving: list[torch.Tensor] = field(default_factory=list)  # [n, hidden] per chunk run
    deviation: list[torch.Tensor] = field(default_factory=list)  # [n] per chunk run

    @property
    def ran(self) -> bool:
        """Every position has run (phases that end inside the model; the compute phase ends in `advance`)."""
        return sum(len(h) for h in self.leaving) == len(self.positions)


@dataclass(eq=False)
class DocState:
    """The connector's state of one request."""

    layout: PromptLayout
    frontier: int = 0  # exact KV (prefix-cache hits) ends here; filled and computed from here on
    reused: list[tuple[ChunkSpan, ChunkEntry]] = field(default_factory=list)  # written layer by layer (`filled`)
    filled: int = 0  # layers 0..filled-1 hold the reused KV; a step's work never runs past them
    phase: Phase | None = None
    snapshot: KVPair | None = None  # the reused KV the chunk in flight will overwrite (measured phases)
    started: float = 0.0


class DocCacheConnector:
    FILL_STEPS = 6  # the reused KV is written over about this many steps, each at least the layers its work runs

    def __init__(self, cache: DocCache, mover: KVMover, backend: AttentionBackend, num_layers: int) -> None:
        self.cache = cache
        self.mover = mover
        self.backend = backend
        self.num_layers = num_layers
        self._states: dict[Request, DocState] = {}

    # ---- scheduler side ----

    def add(self, req: Request, layout: PromptLayout) -> list[Request]:
        """Take a RAG request (blend/reuse); returns the encode jobs its missing chunks need."""
        self._states[req] = DocState(layout)
        return self.cache.admit(req, layout)

    def owns(self, req: Request) -> bool:
        return req in self._states

    def ready(self, req: Request) -> bool:
        """Whether the request may be admitted: not ours, or its reused KV is in memory."""
        return req not in self._states or self.cache.ready(req)

    def poll(self) -> list[Request]:
        """Encode jobs for chunks whose disk read failed (the scheduler queues them)."""
        return self.cache.poll()

    def wait_for_reads(self, timeout_s: float) -> None:
        """For a step that found nothing to run: wait (a little) for a disk read instead of spinning."""
        self.cache.wait_for_reads(timeout_s)

    def admitted(self, req: Request) -> None:
        """The request has blocks for its whole prompt (exact prefix-cache hits up to `num_computed_tokens`):
        plan its first phase. Passages the prefix-cache hits reach into (an earlier request of the same mode had
        the same leading passages) are not filled: their cached blocks stand, and the rest is computed."""
        state = self._states[req]
        state.started = time.perf_counter()
        state.frontier = frontier = req.num_computed_tokens
        state.reused = [(span, entry) for span, entry in self.cache.take(req) if span.start >= frontier]
        if req.doc_mode == "blend" and state.reused:
            dense = min(self.cache.blend.DENSE_LAYERS, self.cache.blend.select_layers)
            state.phase = Phase("dense", list(range(frontier, req.num_tokens)), 0, dense, measure=dense - 1,
                                then=lambda done: self._after_dense(req, done))
        else:
            state.phase = Phase("compute", self.cache.plan_compute(req, state.layout, frontier, None), 0, None)

    def next_work(self, req: Request, budget: int) -> WorkItem | None:
        """The request's next chunk of its current phase, at most `budget` tokens' worth."""
        phase = self._states[req].phase
        if phase is None or phase.handed == len(phase.positions):
            return None
        last = self.num_layers if phase.last is None else phase.last
        start = phase.handed
        end = min(len(phase.positions), start + rows_for_cost(budget, phase.first, last, self.num_layers))
        phase.handed = end
        entering = None if phase.entering is None else phase.entering[start:end]
        return WorkItem(req, phase.positions[start:end], phase.first, phase.last, entering,
                        samples=phase.last is None and end == len(phase.positions))

    def advance(self, item: WorkItem) -> None:
        """After a step: when the compute phase is done, the prompt is complete and the request is let go."""
        req = item.request
        state = self._states[req]
        phase = state.phase
        if phase is not None and phase.last is None and phase.handed == len(phase.positions):
            req.num_computed_tokens = req.num_tokens
            req.num_cached_tokens = state.frontier + req.num_reused_tokens
            req.fill_seconds = time.perf_counter() - state.started
            self.drop(req)

    def drop(self, req: Request) -> None:
        """Forget a request (its chunks unpinned, reads and waits cancelled for it)."""
        if self._states.pop(req, None) is not None:
            self.cache.forget(req)

    # ---- worker side ----

    @torch.inference_mode()
    def before_forward(self, items: list[WorkItem]) -> None:
        for item in items:
            state = self._states.get(item.request)
            if state is None:
                continue
            phase = state.phase
            if state.reused:
                self._fill(item.request, state, item.last_layer or self.num_layers)
            if phase is not None and phase.measure is not None:
                state.snapshot = self.mover.kv_at(phase.measure, item.request.block_table, item.positions)

    @torch.inference_mode()
    def after_forward(self, items: list[WorkItem], leaving: torch.Tensor | None, rows: list[slice]) -> None:
        """`leaving`: the batch's residual stream after the pass ([T, hidden]; None when it ran as a graph, which
        only plain decode steps do); `rows`: each item's rows of it."""
        for item, span in zip(items, rows, strict=True):
            req = item.request
            state = self._states.get(req)
            if state is None:
                if req.prefill_only and item.positions[-1] == req.num_tokens - 1:
                    self._save(req)
                continue
            phase = state.phase
            if phase is None or phase.last is None:
                continue
            assert leaving is not None
            phase.leaving.append(leaving[span].clone())
            if phase.measure is not None:
                assert state.snapshot is not None
                after = self.mover.kv_at(phase.measure, req.block_table, item.positions)
                phase.deviation.append(self.mover.deviation(state.snapshot, after))
                state.snapshot = None
            if phase.ran and phase.then is not None:
                state.phase = phase.then(phase)

    def _fill(self, req: Request, state: DocState, needed: int) -> None:
        """Write the reused KV into the next layers: those this step's work runs (up to `needed`) and a share of
        the rest, so that no one step carries the whole write (the streams decoding beside it would wait)."""
        share = -(-self.num_layers // self.FILL_STEPS)
        upto = min(self.num_layers, max(needed, state.filled + share))
        if upto > state.filled:
            self.mover.fill(self.backend, req.block_table, state.reused, range(state.filled, upto))
            state.filled = upto
        if state.filled == self.num_layers:
            state.reused = []
            self.cache.release(req)

    def _save(self, job: Request) -> None:
        """An encode job's prompt is computed: its chunk's KV goes to the chunk tier."""
        key, encode = self.cache.job(job)
        self.cache.store(self.mover.extract(job.block_table, encode.span, key, encode.doc_ids))

    # ---- blend's selection, phase by phase (BlendConfig says which phases run) ----

    def _after_dense(self, req: Request, dense: Phase) -> Phase:
        """Deviations over every position from the frontier; carry the most deviating candidates deeper, or
        go on to the question's attention, or straight to the compute phase."""
        state, blend = self._states[req], self.cache.blend
        deviation = torch.zeros(req.num_tokens)
        deviation[state.frontier:] = torch.cat(dense.deviation).clamp_min(0)
        hidden = torch.cat(dense.leaving)  # [T - frontier, hidden]
        if blend.select != "query" and blend.select_layers > dense.last:  # type: ignore[operator]
            carried = self.cache.plan_compute(req, state.layout, state.frontier, deviation, share=blend.candidates)
            rows = torch.tensor(carried) - state.frontier
            return Phase("refine", carried, dense.last, blend.select_layers, hidden[rows],  # type: ignore[arg-type]
                         measure=blend.select_layers - 1, then=lambda done: self._after_refine(req, done))
        return self._question(req, deviation, dense.positions, hidden, dense.last)  # type: ignore[arg-type]

    def _after_refine(self, req: Request, refine: Phase) -> Phase:
        deviation = torch.full((req.num_tokens,), -1.0)  # not carried: never chosen over a carried token
        deviation[torch.tensor(refine.positions)] = torch.cat(refine.deviation)
        return self._question(req, deviation, refine.positions, torch.cat(refine.leaving), refine.last)  # type: ignore[arg-type]

    def _question(self, req: Request, deviation: torch.Tensor, carried: list[int], hidden: torch.Tensor,
                  resume: int) -> Phase:
        """By deviation alone: plan now. Else carry the positions computed anyway (the question, the passage
        numbers, any prompt text between the frontier and the passages) from `resume` to the query layer over
        the reused KV, so that the question attends there to their KV as well as to the passages', and score the
        passage tokens by the question's attention."""
        state, blend = self._states[req], self.cache.blend
        question = max(state.layout.chunks[-1].end, state.frontier)
        if blend.select == "deviation" or question >= req.num_tokens:
            return self._compute(req, deviation, carried, hidden, resume)
        reused = {p for s in state.layout.chunks if s.start >= state.frontier for p in range(s.start, s.end)}
        rest = [i for i, p in enumerate(carried) if p not in reused]  # rows of `hidden`; the question's last
        positions = [carried[i] for i in rest]
        layer = max(blend.query_layer, resume)

        def scored(leaving: torch.Tensor) -> Phase:
            relevance = self.mover.question_relevance(leaving, positions, question, layer, req.block_table)
            scores = relevance if blend.select == "query" else torch.where(deviation < 0, -1.0,
                                                                            relevance * deviation)
            return self._compute(req, scores, carried, hidden, resume)

        rows = torch.tensor(rest)
        if layer == resume:
            return scored(hidden[rows])
        return Phase("question", positions, resume, layer, hidden[rows],
                     then=lambda done: scored(torch.cat(done.leaving)))

    def _compute(self, req: Request, scores: torch.Tensor, carried: list[int], hidden: torch.Tensor,
                 resume: int) -> Phase:
        """The tokens to recompute, by `scores`, entering at `resume` from the residual stream the selection left
        them (`carried`'s rows of `hidden`)."""
        state = self._states[req]
        planned = self.cache.plan_compute(req, state.layout, state.frontier, scores)
        row_of = {p: i for i, p in enumerate(carried)}
        return Phase("compute", planned, resume, None, hidden[torch.tensor([row_of[p] for p in planned])])
