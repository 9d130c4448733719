"""`appliance.priority`: nice values only ever go down, per thread, and threads started later inherit them.
Cases that lower the whole process run in a process of their own (a lowered priority cannot be raised back)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from appliance.priority import BACKGROUND_NICE, lower_priority
from retrieval.jobs import JobRunner

linux_only = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread nice values are Linux's")


def _nice_of(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


def _on_a_thread(work) -> object:
    """Run `work()` on a fresh thread (its lowered priority dies with it); what it returned."""
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(work()))
    thread.start()
    thread.join()
    return result[0]


@linux_only
def test_only_the_calling_thread_is_lowered_and_never_raised() -> None:
    mine = _nice_of(threading.get_native_id())

    def lower_twice() -> tuple[int, int, int]:
        tid = threading.get_native_id()
        changed = lower_priority(mine + 7)
        first = _nice_of(tid)
        lower_priority(mine + 3)  # asking for more than it has would need a privilege: left as it is
        return changed, first, _nice_of(tid)

    assert _on_a_thread(lower_twice) == (1, mine + 7, mine + 7)
    assert _nice_of(threading.get_native_id()) == mine  # the caller of the test is untouched


@linux_only
def test_zero_asks_for_nothing() -> None:
    assert _on_a_thread(lambda: (lower_priority(0), _nice_of(threading.get_native_id()))) == (
        0, _nice_of(threading.get_native_id()))


@linux_only
def test_the_whole_process_is_lowered_and_threads_started_later_inherit_it() -> None:
    code = """
        import os, threading
        from appliance.priority import lower_priority

        def nice():
            return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

        before = threading.Event()
        seen = []
        early = threading.Thread(target=lambda: (before.wait(), seen.append(nice())))
        early.start()  # a thread that exists before the call, as the engine process's are
        lower_priority(9, whole_process=True)
        before.set()
        early.join()
        late = threading.Thread(target=lambda: seen.append(nice()))
        late.start()
        late.join()
        print(nice(), *seen)
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["9", "9", "9"]


@linux_only
def test_ingestion_jobs_run_below_the_engine() -> None:
    class RecordingIngestor:
        niceness: list[int] = []

        def run(self, job_id: str, collection: str, items: list) -> None:
            self.niceness.append(_nice_of(threading.get_native_id()))

    ingestor = RecordingIngestor()
    runner = JobRunner(ingestor)  # type: ignore[arg-type]
    runner.submit("job-1", "c", [])
    runner.join()
    runner.stop()
    assert ingestor.niceness == [BACKGROUND_NICE]
    assert _nice_of(threading.get_native_id()) < BACKGROUND_NICE  # the submitting thread is untouched
