"""faiss-gpu: on CUDA, exact search runs on a GPU copy of the index and returns what the CPU would."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.index import VectorIndex

pytestmark = pytest.mark.gpu


def test_gpu_exact_search_matches_brute_force() -> None:
    faiss = pytest.importorskip("faiss")
    if not hasattr(faiss, "StandardGpuResources"):
        pytest.skip("faiss-cpu is installed, not faiss-gpu")
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((2000, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(10_000, 12_000, dtype=np.int64)
    queries = vectors[rng.choice(2000, 20)] + 0.1 * rng.standard_normal((20, 64)).astype(np.float32)
    index = VectorIndex.build(64, ids, vectors, hnsw_threshold=100_000)
    assert index._gpu is not None
    scores, found = index.search(queries, 10)
    exact = queries @ vectors.T  # [20, 2000]
    best = np.argsort(-exact, axis=1)[:, :10]
    np.testing.assert_allclose(scores, np.take_along_axis(exact, best, axis=1), atol=1e-4)  # the 10 best scores
    np.testing.assert_allclose(np.take_along_axis(exact, found - 10_000, axis=1), scores, atol=1e-4)  # of these ids
    smaller = index.with_changes(np.zeros(0, np.int64), None, ids[best[:, 0]], hnsw_threshold=100_000)
    assert smaller._gpu is not None
    _, found = smaller.search(queries, 10)
    assert not np.isin(found, ids[best[:, 0]]).any()



def test_device_cpu_keeps_search_on_the_cpu(tmp_path, loaded_model) -> None:
    """APPLIANCE_DEVICE=cpu reaches the indexes: no GPU copy, through build, changes and snapshots alike."""
    from retrieval.service import RetrievalService

    service = RetrievalService.open(tmp_path, loaded_model.tokenizer, device="cpu")
    use_gpu = service.indexes.use_gpu
    service.close()
    vectors = np.eye(8, dtype=np.float32)
    index = VectorIndex.build(8, np.arange(8), vectors, 100, use_gpu)
    changed = index.with_changes(np.array([8]), vectors[:1], np.array([0]), 100)
    reread = VectorIndex.from_bytes(changed.to_bytes(), changed.tombstones, use_gpu)
    assert index._gpu is None and changed._gpu is None and reread._gpu is None
