"""The query embedder's single-threaded workers must not change how many intra-op threads other threads get."""

from __future__ import annotations

import threading

import torch

from retrieval.embed import _single_thread_pool


def _in_new_thread() -> int:
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


def test_single_thread_workers_leave_the_default_alone() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pool = _single_thread_pool(2, "test-query")
        try:
            assert [pool.submit(torch.get_num_threads).result() for _ in range(4)] == [1, 1, 1, 1]
        finally:
            pool.shutdown()
        assert torch.get_num_threads() == 2
        assert _in_new_thread() == 2  # a thread computing for the first time after the pool started
    finally:
        torch.set_num_threads(before)
