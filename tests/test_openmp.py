"""`release_openmp_workers` ends the calling thread's OpenMP team and no other (see appliance.openmp)."""

from __future__ import annotations

import threading

from appliance.openmp import release_openmp_workers
from tests.openmp_teams import num_threads, on_a_thread, settled_threads, start_team


def test_release_ends_the_calling_threads_team(keep_torch_threads) -> None:
    def work() -> tuple[int, int]:
        start_team()  # a first parallel region may also start threads torch keeps for the process
        release_openmp_workers()
        before = num_threads()
        start_team()
        with_team = num_threads()
        release_openmp_workers()
        return with_team - before, with_team - settled_threads(before)

    started, ended = on_a_thread(work)
    assert started == 1  # the thread and one worker compute on two threads
    assert ended == 1


def test_release_leaves_other_threads_teams_alone(keep_torch_threads) -> None:
    ready, done = threading.Event(), threading.Event()

    def keeps_a_team() -> None:
        start_team()
        ready.set()
        done.wait()

    other = threading.Thread(target=keeps_a_team)
    try:
        before = num_threads()
        other.start()
        ready.wait()
        assert num_threads() == before + 2  # the thread and its worker

        def release_here() -> int:
            release_openmp_workers()
            return settled_threads(before + 1, timeout_s=0.5)  # would drop by one if the other team ended

        assert on_a_thread(release_here) == before + 3  # + this thread
    finally:
        done.set()
        other.join()
