"""Give back the OpenMP worker threads a thread keeps, so that the engine's thread computes at full speed.

Torch's CPU ops run their parallel regions on OpenMP (libgomp). Every thread that runs one keeps a team of
worker threads for as long as it lives, and libgomp stops letting workers wait for work by spinning as soon
as the process holds more of them than it has CPUs: from then on each parallel region first wakes a sleeping
worker. The server steps its engine on a thread of its own, after the main thread has loaded the model (and
kept a team doing so); with two CPUs that was enough to throttle the engine's team, and a `blend` request,
made of many short ops, took 1.8x as long to its first token as the same request stepped on the main thread
(measured on this project's 2-core machine; `docs/BENCHMARKS.md`).

`release_openmp_workers()` ends the calling thread's team (OpenMP 5.0 `omp_pause_resource_all`); a thread that
computes again later starts a new one. Threads that compute only now and then (start-up, document embedding)
call it when they are done, so the thread that steps the engine keeps the only team.
"""

from __future__ import annotations

import ctypes
import functools

_OMP_PAUSE_SOFT = 1  # omp_pause_resource_t: free the threads, keep no state worth keeping


@functools.cache
def _runtimes() -> tuple[ctypes.CDLL, ...]:
    """Every libgomp this process has loaded by the first call (torch's, and any a library bundles, such as
    faiss's), found in its memory map."""
    import torch  # noqa: F401 - loads torch's OpenMP runtime

    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "/libgomp" in line})
    except OSError:  # not Linux: nothing known to release
        return ()
    runtimes = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)  # already loaded: the same library, not a second copy
        except OSError:
            continue
        if hasattr(lib, "omp_pause_resource_all"):
            lib.omp_pause_resource_all.argtypes = [ctypes.c_int]
            runtimes.append(lib)
    return tuple(runtimes)


def release_openmp_workers() -> None:
    """End the calling thread's OpenMP worker team in every loaded libgomp (other threads' teams are left as
    they are). Must not be called from inside a parallel region; harmless where there is no team."""
    for lib in _runtimes():
        lib.omp_pause_resource_all(_OMP_PAUSE_SOFT)
