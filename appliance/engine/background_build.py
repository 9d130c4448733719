"""Something the engine builds once on a background thread while other code paths serve (compiled decode)."""

from __future__ import annotations

import logging
import threading
import time

from appliance.openmp import release_openmp_workers

log = logging.getLogger("appliance.engine")


class BackgroundBuild:
    """Contract: `start` runs the subclass's `_build` on a daemon thread; `ready` once it returned, `failed` (one
    line) if it raised, `compile_seconds` how long it took; `wait` joins it. A failure is logged once and never
    raised: whoever uses the build keeps serving without it."""

    name = "build"  # in the log lines: "<name> ready after ...", "<name> unavailable ..."
    fallback = "the other paths serve"  # what happens without it, for the failure's log line

    def __init__(self) -> None:
        self.ready = False
        self.failed: str | None = None
        self.compile_seconds = 0.0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Build on a background thread."""
        self._thread = threading.Thread(target=self._run, name=self.name.replace(" ", "-"), daemon=True)
        self._thread.start()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Join the build (tests, benchmarks); whether it is ready."""
        if self._thread is not None:
            self._thread.join(timeout_s)
        return self.ready

    def _build(self) -> str:
        """Build; returns a note for the ready line ('' for none). Subclasses implement it."""
        raise NotImplementedError

    def _done(self) -> None:
        """Called after `_build`, whether it succeeded or not (drop what only the build needed)."""

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            note = self._build()
        except Exception as exc:  # noqa: BLE001 - any failure leaves the other paths serving
            self.failed = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"  # one line
            log.warning("%s unavailable, %s (%s)", self.name, self.fallback, self.failed)
            return
        finally:
            self._done()
            release_openmp_workers()  # this thread's team would throttle the engine thread's (appliance/openmp.py)
        self.compile_seconds = time.perf_counter() - started
        self.ready = True
        log.info("%s ready after %.1f s%s", self.name, self.compile_seconds, f" ({note})" if note else "")
