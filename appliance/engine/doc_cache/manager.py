"""The chunk bookkeeping of the document cache: which chunks a request can reuse, which must be loaded or
encoded first, and which of its tokens to compute after the reused KV is in place. No tensor work here
(see blend.py); the connector (connector.py) drives it.

A `blend`/`reuse` request goes through three steps:
  1. `admit`: each chunk is looked up in memory; a hit is pinned for the request. A chunk on disk is read
     on the loader thread (one read per chunk at a time); a miss starts an encode job (a prefill-only request
     `prefix + chunk`), unless one is already running for that chunk, in which case the request waits on that
     job too — a chunk is never encoded twice at once.
  2. When its last missing chunk has arrived (`store` of an encode, or `poll` of a finished read), the
     request is `ready`: the scheduler admits it with blocks for its whole prompt.
  3. The connector fills the blocks (KVMover) and asks `plan_compute` which positions to compute.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass

import torch

from appliance.config import BLEND_QUERY_LAYER, BLEND_SELECT
from appliance.engine.doc_cache.disk import DiskTier
from appliance.engine.doc_cache.layout import ChunkSpan, PromptLayout, chunk_key
from appliance.engine.doc_cache.loader import DiskLoader
from appliance.engine.doc_cache.tier import ChunkEntry, ChunkTier
from appliance.engine.request import Request
from appliance.engine.sampling import SamplingParams


@dataclass(frozen=True)
class BlendConfig:
    """`ratio`: share of each request's reused chunk tokens recomputed (CacheBlend); `first_tokens`: leading
    tokens of every chunk always recomputed (EPIC). The first `DENSE_LAYERS` run over the whole prompt; how the
    `ratio` is chosen is `select`:
    - "deviation": the most deviating `candidates` share (>= `ratio`; 1.0: every token) and the tokens computed
      anyway are carried on to `select_layers` (CacheBlend's gradual filtering), where the reused tokens whose
      KV deviates most there are chosen;
    - "query": the reused tokens the question attends to most at `query_layer` (ProphetKV), the question carried
      there alone from the dense layers;
    - "mixed": as "deviation", each carried token's deviation weighted by the question's attention to it at
      `query_layer` (at least `select_layers`).
    The question and the passage numbers are always computed."""

    DENSE_LAYERS = 2  # the first layer whose KV depends on context, so can deviate, is the second

    ratio: float
    first_tokens: int
    select_layers: int
    candidates: float = 1.0
    select: str = BLEND_SELECT
    query_layer: int = BLEND_QUERY_LAYER


@dataclass(frozen=True)
class EncodeJob:
    """A prefill-only request computing one chunk's KV; `span` is where the chunk sits in the job's prompt."""

    request: Request
    span: ChunkSpan
    doc_ids: frozenset[str]


@dataclass
class DocCacheStats:
    encoded_chunks: int = 0
    encoded_tokens: int = 0
    disk_hits: int = 0


class DocCache:
    """Contract: `admit` returns the encode jobs to schedule; the request is `ready` once every chunk it reuses is
    in memory and pinned for it (`store` and `poll` bring chunks in; `poll` returns encode jobs for chunks whose
    read failed); `take` hands over (and later `release` unpins) a ready request's chunks; `forget` drops a
    request at any stage."""

    def __init__(self, tier: ChunkTier, disk: DiskTier | None, salt: bytes, blend: BlendConfig) -> None:
        self.tier = tier
        self.disk = disk
        self.loader = DiskLoader(disk) if disk is not None else None
        self.salt = salt
        self.blend = blend
        self.stats = DocCacheStats()
        self._jobs: dict[str, EncodeJob] = {}  # key -> encode job in flight
        self._job_keys: dict[Request, str] = {}  # encode request -> its key
        self._loads: dict[str, tuple[Future[ChunkEntry | None], list[int], list[int], str]] = {}  # key -> read
        self._waiting: dict[Request, dict[str, list[ChunkSpan]]] = {}  # request -> keys it waits for, their spans
        self._held: dict[Request, list[tuple[ChunkSpan, ChunkEntry]]] = {}  # request -> pinned chunks
        self._stale: set[str] = set()  # reads in flight of chunks invalidated meanwhile: encoded again instead
        self._ids = itertools.count()

    def keys(self, token_ids: list[int], layout: PromptLayout) -> list[str]:
        prefix = token_ids[:layout.prefix_len]
        return [chunk_key(prefix, token_ids[s.start:s.end], self.salt) for s in layout.chunks]

    def admit(self, req: Request, layout: PromptLayout) -> list[Request]:
        held: list[tuple[ChunkSpan, ChunkEntry]] = []
        missing: dict[str, list[ChunkSpan]] = {}
        jobs: list[Request] = []
        prefix = req.token_ids[:layout.prefix_len]
        for span, key in zip(layout.chunks, self.keys(req.token_ids, layout), strict=True):
            entry = self.tier.get(key)
            if entry is not None:
                self.tier.pin(entry)
                held.append((span, entry))
                continue
            missing.setdefault(key, []).append(span)
            chunk = req.token_ids[span.start:span.end]
            if key in self._jobs or key in self._loads:
                pass
            elif self.loader is not None and self.disk is not None and key in self.disk:
                self._loads[key] = (self.loader.load(key), prefix, chunk, span.doc_id)
            else:
                jobs.append(self._start_job(key, prefix, chunk, span.doc_id))
            if key in self._jobs:
                req.num_encoded_tokens += span.length
        self._held[req] = held
        if missing:
            self._waiting[req] = missing
        return jobs

    def ready(self, req: Request) -> bool:
        """Every chunk the request reuses is in memory, pinned for it."""
        return req not in self._waiting

    def wait_for_reads(self, timeout_s: float) -> None:
        """Block until a disk read in flight lands or `timeout_s` passes (at once when none is in flight)."""
        if self._loads:
            wait([future for future, *_ in self._loads.values()], timeout_s, FIRST_COMPLETED)

    def poll(self) -> list[Request]:
        """Bring finished disk reads into memory; return encode jobs for the chunks whose file was gone."""
        jobs = []
        for key, (future, prefix, chunk, doc_id) in list(self._loads.items()):
            if not future.done():
                continue
            del self._loads[key]
            entry = None if key in self._stale else future.result()
            self._stale.discard(key)
            if entry is None:
                jobs.append(self._start_job(key, prefix, chunk, doc_id))
                for req, waiting in self._waiting.items():
                    req.num_encoded_tokens += sum(span.length for span in waiting.get(key, ()))
                continue
            self.stats.disk_hits += 1
            self.tier.put(entry)
            self._arrived(entry)
        return jobs

    def is_cached(self, prefix: list[int], chunk: list[int]) -> bool:
        """Whether the chunk's KV is in memory, on disk, or being encoded."""
        return self._known(chunk_key(prefix, chunk, self.salt))

    def warm_job(self, prefix: list[int], chunk: list[int], doc_id: str) -> Request | None:
        """An encode job for a chunk not cached anywhere yet (None when it is, or is being encoded)."""
        key = chunk_key(prefix, chunk, self.salt)
        return None if self._known(key) else self._start_job(key, prefix, chunk, doc_id)

    def _known(self, key: str) -> bool:
        return key in self._jobs or key in self._loads or key in self.tier or (self.disk is not None
                                                                             and key in self.disk)

    def _start_job(self, key: str, prefix: list[int], chunk: list[int], doc_id: str) -> Request:
        job = Request(f"encode-{next(self._ids)}", [*prefix, *chunk], SamplingParams(max_tokens=1))
        job.prefill_only = True
        self._jobs[key] = EncodeJob(job, ChunkSpan(len(prefix), len(chunk)), frozenset({doc_id}))
        self._job_keys[job] = key
        return job

    def job(self, request: Request) -> tuple[str, EncodeJob]:
        """The key and job of an encode request."""
        key = self._job_keys[request]
        return key, self._jobs[key]

    def store(self, entry: ChunkEntry) -> None:
        """Keep a freshly encoded entry (memory and disk) and hand it to the requests waiting for it."""
        job = self._jobs.pop(entry.key, None)
        if job is not None:
            self._job_keys.pop(job.request, None)
        self.stats.encoded_chunks += 1
        self.stats.encoded_tokens += entry.num_tokens
        self.tier.put(entry)
        if self.disk is not None:
            self.disk.put(entry)
        self._arrived(entry)

    def _arrived(self, entry: ChunkEntry) -> None:
        """Pin a chunk now in memory for every request waiting for it."""
        for req, waiting in list(self._waiting.items()):
            for span in waiting.pop(entry.key, ()):
                self.tier.pin(entry)
                self._held[req].append((span, entry))
            if not waiting:
                del self._waiting[req]

    def take(self, req: Request) -> list[tuple[ChunkSpan, ChunkEntry]]:
        """The pinned chunks of a request about to be filled, in prompt order (still pinned)."""
        return sorted(self._held.get(req, []), key=lambda pair: pair[0].start)

    def release(self, req: Request) -> None:
        """Unpin a request's chunks (after its fill, or when it is dropped)."""
        for _, entry in self._held.pop(req, []):
            self.tier.unpin(entry)

    def forget(self, req: Request) -> None:
        self._waiting.pop(req, None)
        self.release(req)

    def invalidate(self, doc_id: str) -> int:
        """Drop every cached chunk of a document, on disk and in memory; returns how many entries went.
        Disk goes first, so that a read in between cannot promote an invalidated file back into memory; a read
        already in flight is discarded when it lands."""
        self._stale.update(key for key, (_, _, _, doc) in self._loads.items() if doc == doc_id)
        removed = self.disk.invalidate(doc_id) if self.disk is not None else 0
        return removed + len(self.tier.invalidate(doc_id))

    def variant_salt(self, mode: str) -> bytes:
        """The prefix-cache chain salt of blocks holding `mode`'s reused KV (the blend settings included):
        a block blended one way is never taken for exact KV, nor for KV blended another way."""
        settings = f"{mode}|{self.blend}" if mode == "blend" else mode
        return hashlib.sha256(self.salt + settings.encode()).digest()

    def plan_compute(self, req: Request, layout: PromptLayout, frontier: int, scores: torch.Tensor | None,
                     share: float | None = None) -> list[int]:
        """The positions to compute after a fill: everything at or past `frontier` that is not a reused chunk
        token, plus (blend, given per-position `scores`: deviation, the question's attention or both) each
        chunk's first tokens and the highest scoring `share` (default: blend's `ratio`) of the reused chunk
        tokens. Chunks starting before `frontier` were not filled (see the connector's `admitted`). Sets the
        request's reuse counters (the last call's stand)."""
        chunk_positions: list[int] = []
        chosen: set[int] = set()
        for span in layout.chunks:
            if span.start < frontier:
                continue
            chunk_positions.extend(range(span.start, span.end))
            if scores is not None:
                chosen.update(range(span.start, min(span.start + self.blend.first_tokens, span.end)))
        in_chunks = set(chunk_positions)
        share = self.blend.ratio if share is None else share
        if scores is not None and share > 0:
            candidates = [p for p in chunk_positions if p not in chosen]
            extra = min(len(candidates), math.ceil(share * len(chunk_positions)))
            if extra:
                best = scores[torch.tensor(candidates)]
                chosen.update(candidates[i] for i in best.topk(extra).indices.tolist())
        rest = [p for p in range(frontier, req.num_tokens) if p not in in_chunks]
        req.num_recomputed_tokens = len(chosen)
        req.num_reused_tokens = len(in_chunks) - len(chosen)
        return sorted(chosen.union(rest))
