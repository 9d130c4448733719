"""Candidate generation and fusion over several collections' indexes (no storage access here)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from retrieval.filters import AllowedIds
from retrieval.indexes import CollectionIndex
from retrieval.types import SearchMode

RRF_K = 60


def _merge(lists: list[tuple[np.ndarray, np.ndarray]], limit: int) -> list[tuple[int, float]]:
    """Per-collection (scores, ids) -> one list of (id, score), best first."""
    pairs = [(int(i), float(s)) for scores, ids in lists for s, i in zip(scores, ids, strict=True) if i >= 0]
    pairs.sort(key=lambda p: -p[1])
    return pairs[:limit]


def fuse(
    indexes: Sequence[CollectionIndex], query_vector: np.ndarray | None, query: str, k: int, mode: SearchMode,
    allowed: Sequence[AllowedIds | None] | None = None,
) -> list[tuple[int, float]]:
    """Ranked (chunk id, score), at most `k`: vector = cosine, bm25 = BM25 score, hybrid = reciprocal-rank
    fusion (sum of 1 / (60 + rank)) of the vector and BM25 rankings, each `candidates` deep.

    `allowed[i]` (None: all) restricts collection i's candidates inside both searches, before any cut, so a
    restrictive filter still yields up to `k` results."""
    candidates = max(4 * k, 40)
    only = list(allowed) if allowed is not None else [None] * len(indexes)
    vector: list[tuple[int, float]] = []
    lexical: list[tuple[int, float]] = []
    if mode in ("vector", "hybrid") and query_vector is not None:
        found = [ix.vector.search(query_vector[None, :], candidates, ids)
                 for ix, ids in zip(indexes, only, strict=True)]
        vector = _merge([(s[0], i[0]) for s, i in found], candidates)
    if mode in ("bm25", "hybrid"):
        lexical = _merge([ix.lexical.search(query, candidates, ids) for ix, ids in zip(indexes, only, strict=True)],
                         candidates)
    if mode == "vector":
        return vector[:k]
    if mode == "bm25":
        return lexical[:k]
    fused: dict[int, float] = {}
    for ranking in (vector, lexical):
        for rank, (chunk_id, _) in enumerate(ranking):
            fused[chunk_id] = fused.get(chunk_id, 0.0) + 1.0 / (RRF_K + rank + 1)
    return sorted(fused.items(), key=lambda p: -p[1])[:k]
