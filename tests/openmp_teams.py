"""Helpers to observe OpenMP worker teams. A thread's libgomp workers are OS threads it creates, and a new OS
thread takes its creator's name, so a test names the thread it works on and counts the threads of that name:
other threads of the test process, starting or ending meanwhile, do not enter the count."""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

T = TypeVar("T")
_PR_SET_NAME = 15


def name_this_thread(name: str) -> None:
    """Give the calling OS thread `name` (at most 15 characters); threads it creates from now on take it too."""
    ctypes.CDLL(None).prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def threads_named(name: str) -> int:
    """OS threads of this process called `name`."""
    count = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            count += (task / "comm").read_text().strip() == name
        except OSError:  # the thread ended while we looked
            continue
    return count


def settled_count(name: str, expected: int, timeout_s: float = 2.0) -> int:
    """`threads_named(name)` once it equals `expected`, or what it is after `timeout_s` (an ending thread takes a
    moment to leave /proc)."""
    deadline = time.monotonic() + timeout_s
    while (count := threads_named(name)) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return count


def start_team() -> None:
    """Run one parallel region on two intra-op threads: the calling thread now keeps one OpenMP worker."""
    torch.set_num_threads(2)
    torch.ones(1 << 22).mul_(2)  # far above torch's grain size: a real OpenMP parallel region


def on_a_thread(name: str, fn: Callable[[], T]) -> T:
    """Run `fn` on a new thread called `name` (it ends with the call, and its team with it); return its result."""
    result: list[T] = []

    def named() -> None:
        name_this_thread(name)
        result.append(fn())

    thread = threading.Thread(target=named)
    thread.start()
    thread.join()
    return result[0]
