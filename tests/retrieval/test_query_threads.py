"""The embedder must not slow other threads' torch work: its single-threaded query workers leave the default
thread count alone, and a thread that embeds documents keeps no OpenMP team afterwards (appliance.openmp)."""

from __future__ import annotations

import torch

from retrieval.embed import _single_thread_pool, shared_embedder
from tests.openmp_teams import on_a_thread, settled_count, start_team, threads_named


def test_single_thread_workers_leave_the_default_alone(keep_torch_threads) -> None:
    torch.set_num_threads(2)
    pool = _single_thread_pool(2, "test-query")
    try:
        assert [pool.submit(torch.get_num_threads).result() for _ in range(4)] == [1, 1, 1, 1]
    finally:
        pool.shutdown()
    assert torch.get_num_threads() == 2
    assert on_a_thread("first-compute", torch.get_num_threads) == 2  # a thread new to torch after the pool started


def test_embedding_documents_gives_back_the_threads_openmp_team(keep_torch_threads) -> None:
    embedder = shared_embedder("default", "auto")

    def embed() -> int:
        start_team()
        with_team = threads_named("omp-embed")
        embedder.encode(["a passage of a document to embed", "and another one"])
        return with_team - settled_count("omp-embed", with_team - 1)

    assert on_a_thread("omp-embed", embed) == 1
