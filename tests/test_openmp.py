"""`release_openmp_workers` ends the calling thread's OpenMP team and no other (see appliance.openmp)."""

from __future__ import annotations

import threading

from appliance.openmp import release_openmp_workers
from tests.openmp_teams import name_this_thread, on_a_thread, settled_count, start_team, threads_named


def test_release_ends_the_calling_threads_team(keep_torch_threads) -> None:
    def work() -> int:
        start_team()
        with_team = threads_named("omp-release")  # the thread, its worker (and, at torch's first parallel
        release_openmp_workers()                  # region in the process, a thread torch keeps)
        return with_team - settled_count("omp-release", with_team - 1)

    assert on_a_thread("omp-release", work) == 1


def test_release_leaves_other_threads_teams_alone(keep_torch_threads) -> None:
    ready, done = threading.Event(), threading.Event()

    def keeps_a_team() -> None:
        name_this_thread("omp-keeper")
        start_team()
        ready.set()
        done.wait()

    other = threading.Thread(target=keeps_a_team)
    other.start()
    try:
        ready.wait()
        with_team = threads_named("omp-keeper")  # the thread and its worker
        on_a_thread("omp-releaser", release_openmp_workers)
        assert settled_count("omp-keeper", with_team - 1, timeout_s=0.5) == with_team  # not if that team ended
    finally:
        done.set()
        other.join()
