"""Keep Python's cyclic garbage collector off the objects a serving process builds once and keeps.

A loaded engine holds millions of Python objects (the model's modules, `torch.compile`'s graphs, the
tokenizer's tables), and every full collection walks them all: in the engine process of `appliance serve` on
this project's 2-core machine (timed by a `gc.callbacks` hook), full collections took 190-230 ms, about one
every 35 s while 16 streams decoded, each one a stall of every stream; frozen, none took over 2 ms. Freezing
collects once and moves what survives to the permanent generation (`gc.freeze`), so that later collections
walk only what was made since.

Only serving processes freeze: a process that builds and drops engines (tests, benchmarks) would keep what it
froze, garbage or not, for good.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("appliance")


def freeze_long_lived(what: str) -> None:
    """Collect, then exclude everything alive now from later collections; `what` names the moment (a log line).
    A one-time pause where something long-lived was just built, instead of one at every full collection."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.info("%s: %d objects frozen out of garbage collection in %.0f ms", what, gc.get_freeze_count(),
             (time.perf_counter() - started) * 1000)


def freeze_serving_engine(wait_for_builds: Callable[[], float | None]) -> None:
    """In a serving process, once its engine is loaded: freeze now, and again from a daemon thread once the
    engine's background builds (compiled decode, the fused layer), which build more long-lived objects, are done.
    `wait_for_builds`: the engine runner's (joins them; None when there were none)."""
    freeze_long_lived("engine loaded")

    def after_builds() -> None:
        if wait_for_builds() is not None:
            freeze_long_lived("background builds done")

    threading.Thread(target=after_builds, name="freeze-after-builds", daemon=True).start()
