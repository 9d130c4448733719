"""Helpers to observe OpenMP worker teams: the threads of this process, counted from /proc."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def num_threads() -> int:
    """OS threads of this process now (a libgomp team's workers are threads of their own)."""
    return len(os.listdir("/proc/self/task"))


def settled_threads(expected: int, timeout_s: float = 2.0) -> int:
    """The thread count once it equals `expected`, or what it is after `timeout_s` (exiting threads take a
    moment to leave /proc)."""
    deadline = time.monotonic() + timeout_s
    while (count := num_threads()) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return count


def start_team() -> None:
    """Run one parallel region on two intra-op threads: the calling thread now keeps one OpenMP worker."""
    torch.set_num_threads(2)
    torch.ones(1 << 22).mul_(2)  # far above torch's grain size: a real OpenMP parallel region


def on_a_thread(fn: Callable[[], T]) -> T:
    """Run `fn` on a new thread (it ends with the call, and its team with it) and return what it returned."""
    result: list[T] = []
    thread = threading.Thread(target=lambda: result.append(fn()))
    thread.start()
    thread.join()
    return result[0]
