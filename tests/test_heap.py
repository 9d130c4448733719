"""`appliance.heap`: what a serving process freezes out of garbage collection, and when. Each case runs in a
process of its own: a freeze is for good, and this one runs the rest of the suite."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_what_lives_at_a_freeze_is_no_longer_walked_and_garbage_is_collected_first() -> None:
    kept, collected, walked = _run("""
        import gc, weakref
        from appliance.heap import freeze_long_lived

        class Node:
            pass

        kept = [Node() for _ in range(5000)]  # the engine's objects, say
        garbage = Node()
        garbage.me = garbage  # a cycle nothing refers to: freezing must not keep it
        probe = weakref.ref(garbage)
        del garbage
        freeze_long_lived("test")
        tracked = {id(o) for o in gc.get_objects()}  # what later collections walk
        print(sum(id(n) in tracked for n in kept), probe() is None, len(tracked))
    """)
    assert kept == "0"  # none of them walked again
    assert collected == "True"
    assert int(walked) < 1000  # only what was made after the freeze


def test_a_serving_engine_freezes_at_load_and_again_once_its_builds_are_done() -> None:
    out = _run("""
        import gc, threading, time
        from appliance.heap import freeze_serving_engine

        built = threading.Event()

        def wait_for_builds():  # a runner's, with one background build still running
            built.wait()
            return 1.0

        freeze_serving_engine(wait_for_builds)
        at_load = gc.get_freeze_count()
        made_by_the_build = [[i] for i in range(5000)]  # what the build leaves: long-lived
        time.sleep(0.2)
        before_done = gc.get_freeze_count()
        built.set()
        deadline = time.monotonic() + 10
        while gc.get_freeze_count() == before_done and time.monotonic() < deadline:
            time.sleep(0.01)
        print(at_load > 0, before_done == at_load, gc.get_freeze_count() >= at_load + 5000)
    """)
    assert out == ["True", "True", "True"]


def test_without_background_builds_a_serving_engine_freezes_once() -> None:
    out = _run("""
        import logging, sys, time
        logging.basicConfig(level="INFO", stream=sys.stdout, format="%(message)s")
        from appliance.heap import freeze_serving_engine

        freeze_serving_engine(lambda: None)  # a runner without builds: wait_for_builds returns None at once
        time.sleep(0.3)
        print("end")
    """)
    text = " ".join(out)
    assert text.count("objects frozen out of garbage collection") == 1 and "engine loaded" in text
    assert "background builds done" not in text
