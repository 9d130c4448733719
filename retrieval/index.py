"""FAISS vector index of one collection; ids are chunk ids, vectors are unit length (inner product).

Exact (`IndexFlatIP`) while the collection is small; past `hnsw_threshold` vectors it becomes HNSW.
Removal: exact indexes remove ids; HNSW cannot, so removed ids become tombstones excluded inside the
search (an IDSelector) until the next rebuild. With `use_gpu` (the default; off under APPLIANCE_DEVICE=cpu),
on CUDA with faiss-gpu installed, exact search runs on a GPU copy (CPU-only machines never touch it).
"""

from __future__ import annotations

import functools
from typing import Any

import faiss
import numpy as np

from retrieval.filters import AllowedIds

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 64
EXACT_FILTER_MAX = 4096  # a filter allowing at most this many vectors is searched exactly over them
HNSW_FILTER_EF_MAX = 2048


@functools.cache
def _gpu_resources() -> Any:
    if not hasattr(faiss, "StandardGpuResources"):
        return None
    try:
        import torch
    except ImportError:
        return None
    return faiss.StandardGpuResources() if torch.cuda.is_available() else None


class VectorIndex:
    """Copy-on-write: `with_changes` returns a new index, so searches on the old one stay safe."""

    def __init__(self, index: Any, tombstones: np.ndarray | None = None, use_gpu: bool = True) -> None:
        self.index = index
        self.use_gpu = use_gpu
        self.tombstones = np.zeros(0, dtype=np.int64) if tombstones is None else tombstones
        self._selector = None
        if len(self.tombstones):
            self._selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(self.tombstones))
        self._gpu: Any = None
        if use_gpu and self.is_exact and (res := _gpu_resources()) is not None:
            self._gpu = faiss.index_cpu_to_gpu(res, 0, self.index)

    @property
    def is_exact(self) -> bool:
        return isinstance(faiss.downcast_index(self.index.index), faiss.IndexFlat)

    @classmethod
    def build(cls, dim: int, ids: np.ndarray, vectors: np.ndarray | None, hnsw_threshold: int,
              use_gpu: bool = True) -> VectorIndex:
        if len(ids) >= hnsw_threshold:
            inner: Any = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        else:
            inner = faiss.IndexFlatIP(dim)
        index: Any = faiss.IndexIDMap2(inner)
        if vectors is not None and len(ids):
            index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))
        return cls(index, use_gpu=use_gpu)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def ids(self) -> np.ndarray:
        """Live ids, sorted."""
        all_ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        return np.setdiff1d(all_ids, self.tombstones)

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(live ids, their vectors)."""
        all_ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        vectors = self.index.index.reconstruct_n(0, len(all_ids)) if len(all_ids) else np.zeros((0, self.dim))
        keep = ~np.isin(all_ids, self.tombstones)
        return all_ids[keep], vectors[keep]

    def with_changes(
        self, add_ids: np.ndarray, add_vectors: np.ndarray | None, remove_ids: np.ndarray, hnsw_threshold: int
    ) -> VectorIndex:
        live = len(self.ids()) + len(add_ids) - len(remove_ids)
        crossing = self.is_exact and live >= hnsw_threshold
        too_many_tombstones = len(self.tombstones) + len(remove_ids) > max(1000, live // 5)
        if crossing or (not self.is_exact and too_many_tombstones):
            ids, vectors = self.all_vectors()
            keep = ~np.isin(ids, remove_ids)
            ids, vectors = ids[keep], vectors[keep]
            if len(add_ids):
                ids = np.concatenate([ids, add_ids])
                vectors = np.concatenate([vectors, add_vectors])
            return VectorIndex.build(self.dim, ids, vectors, hnsw_threshold, self.use_gpu)
        index: Any = faiss.clone_index(self.index)
        tombstones = self.tombstones
        if len(remove_ids):
            if self.is_exact:
                index.remove_ids(np.asarray(remove_ids, dtype=np.int64))
            else:
                tombstones = np.union1d(tombstones, remove_ids).astype(np.int64)
        if len(add_ids):
            index.add_with_ids(np.ascontiguousarray(add_vectors, dtype=np.float32), np.asarray(add_ids, dtype=np.int64))
        return VectorIndex(index, tombstones, self.use_gpu)

    def search(self, queries: np.ndarray, k: int, allowed: AllowedIds | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of shape (len(queries), k); missing results have id -1. With `allowed`, only those
        ids are candidates (filtered inside the search, so up to `k` allowed results come back)."""
        if self.index.ntotal == 0 or (allowed is not None and not len(allowed)):
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        k = min(k, int(self.index.ntotal))
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if allowed is not None:
            return self._search_allowed(queries, k, allowed)
        if self._gpu is not None:
            return self._gpu.search(queries, k)
        params = None
        if not self.is_exact:
            hnsw_params: Any = faiss.SearchParametersHNSW  # type: ignore[attr-defined]  # missing from faiss's stubs
            params = hnsw_params(efSearch=max(HNSW_EF_SEARCH, k), sel=self._selector)
        return self.index.search(queries, k, params=params)

    def _search_allowed(self, queries: np.ndarray, k: int, allowed: AllowedIds) -> tuple[np.ndarray, np.ndarray]:
        """A few allowed vectors: exact scores over them; more: the index searched through a bitmap selector
        (CPU; HNSW with its candidate list widened by the filter's selectivity, and exact over the allowed
        vectors for a query that still comes back short)."""
        if len(allowed) <= EXACT_FILTER_MAX:
            return self._exact_over(queries, k, allowed)
        bitmap = allowed.bitmap  # referenced until the search returns: the selector only points at it
        selector: Any = faiss.IDSelectorBitmap(allowed.bound, faiss.swig_ptr(bitmap))
        if self._selector is not None:
            selector = faiss.IDSelectorAnd(selector, self._selector)
        if self.is_exact:
            params: Any = faiss.SearchParameters
            return self.index.search(queries, k, params=params(sel=selector))
        share = len(allowed) / max(1, int(self.index.ntotal))
        ef = int(min(HNSW_FILTER_EF_MAX, max(HNSW_EF_SEARCH, k, 2 * k / share)))
        hnsw_params: Any = faiss.SearchParametersHNSW  # type: ignore[attr-defined]  # missing from faiss's stubs
        scores, ids = self.index.search(queries, k, params=hnsw_params(efSearch=ef, sel=selector))
        short = (ids >= 0).sum(axis=1) < k
        if short.any():
            scores[short], ids[short] = self._exact_over(queries[short], k, allowed)
        return scores, ids

    def _exact_over(self, queries: np.ndarray, k: int, allowed: AllowedIds) -> tuple[np.ndarray, np.ndarray]:
        """Inner products with every allowed live vector; (scores, ids) padded with -1 to `k` columns."""
        ids = allowed.ids[np.isin(allowed.ids, self._live_ids)]
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        found = np.full((len(queries), k), -1, dtype=np.int64)
        if len(ids):
            sims = queries @ self.index.reconstruct_batch(ids).T  # (queries, allowed)
            top = min(k, len(ids))
            best = np.argsort(-sims, axis=1, kind="stable")[:, :top]
            scores[:, :top] = np.take_along_axis(sims, best, axis=1)
            found[:, :top] = ids[best]
        return scores, found

    @functools.cached_property
    def _live_ids(self) -> np.ndarray:
        return self.ids()

    def to_bytes(self) -> bytes:
        return faiss.serialize_index(self.index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, tombstones: np.ndarray, use_gpu: bool = True) -> VectorIndex:
        return cls(faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8)), tombstones, use_gpu)
