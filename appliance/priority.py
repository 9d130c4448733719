"""Who gets the CPU first when every core is busy: the API, then the engine, then background work.

On a CPU machine the engine's threads keep every core busy while they decode. Linux's scheduler (EEVDF) lets a
waking thread take a core from a running one only when the waking thread is owed CPU time and its deadline is
earlier; otherwise it waits for the next scheduler tick (4 ms at the common HZ=250). The server's event loop,
which wakes for every request and works in short bursts, often waits that long: measured with 16 streams
decoding and a 2k-token prompt arriving on 2 cores, 70-80% of the event loop's stalls over 1.5 ms were time
spent runnable but not running, and `/health` took 6.5-8 ms at p99. At a lower priority (a higher nice value:
a smaller share of the CPU when there is contention, the whole CPU when there is none) the engine gives way at
once: `/health` p99 2.6-2.8 ms in the same runs, decode unchanged within the machine's drift
(docs/BENCHMARKS.md, "HTTP API under load: the engine below the API's priority").

So there are three tiers, set only downwards (no privilege needed): the server's threads at the nice value they
were started with, the engine at `APPLIANCE_ENGINE_NICE` (10 by default), and work that nobody waits for by the
millisecond (ingestion jobs, `appliance ingest`, `warm`, `sync`) at `BACKGROUND_NICE`, below the engine, so
that an ingest does not take the CPU from the answers being decoded.

Linux's nice value belongs to each thread, and a thread starts with its creator's: lowering the threads that
exist now also lowers the worker threads they start later (torch's OpenMP team among them).
"""

from __future__ import annotations

import logging
import os
import threading

MAX_NICE = 19
BACKGROUND_NICE = MAX_NICE  # the lowest: ingestion and the batch commands

log = logging.getLogger("appliance")


def lower_priority(nice: int, whole_process: bool = False) -> int:
    """Set the nice value of the calling thread (whole_process: of every thread of this process) to `nice`, or
    leave it where it is if it is already that low or lower (raising a priority needs a privilege). Returns
    how many threads were changed. Where threads have no nice values of their own (not Linux), only a
    whole-process request does anything (the process's value): one thread's must not lower the server."""
    nice = min(max(nice, 0), MAX_NICE)
    if nice == 0:
        return 0
    changed = 0
    for tid in _threads(whole_process):
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
                changed += 1
        except OSError as exc:  # a thread that ended meanwhile, or a platform that says no
            log.debug("could not lower the priority of thread %d: %s", tid, exc)
    return changed


def _threads(whole_process: bool) -> list[int]:
    """The thread ids to lower (0: the process, where threads have no nice values of their own)."""
    if not os.path.isdir("/proc/self/task"):
        return [0] if whole_process else []
    if not whole_process:
        return [threading.get_native_id()]
    return [int(tid) for tid in os.listdir("/proc/self/task")]
