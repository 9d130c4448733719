"""`appliance serve` as a subprocess for the benchmarks that measure what a client sees."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

import httpx


@dataclass
class Served:
    url: str
    ready_s: float  # from the start of the process to /ready answering 200
    pid: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running(command: list[str], env: dict[str, str] | None, ready_url: str, what: str
            ) -> Iterator[tuple[subprocess.Popen[str], IO[str]]]:
    """Start `command` (its output to a file), wait until GET `ready_url` answers 200, yield the process and its
    log, stop it (SIGTERM). Raises RuntimeError naming `what` with its log's tail if it exits first."""
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: read only to find lines, or once it failed
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            while process.poll() is None:
                try:
                    if httpx.get(ready_url, timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
            else:
                log.seek(0)
                raise RuntimeError(f"{what} exited with {process.returncode}: {log.read()[-2000:]}")
            yield process, log
        finally:
            process.terminate()
            process.wait(timeout=60)


@contextmanager
def serving(env: dict[str, str], builds: tuple[str, ...] = ()) -> Iterator[Served]:
    """Start `appliance serve` with `env` (APPLIANCE_* on top of this process's environment) on a free port,
    wait for /ready and then for the "ready" log line of each background build named in `builds` (their
    `BackgroundBuild.name`), yield it, stop it (SIGTERM). Raises RuntimeError with its log's tail if it exits
    first, or if a build says it is unavailable."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **env, "APPLIANCE_PORT": str(port)}
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    level = "info" if builds else "warning"  # the builds' ready lines are info
    command = [sys.executable, "-m", "appliance.cli", "serve", "--log-level", level]
    with running(command, env, url + "/ready", "the server") as (server, log):
        ready_s = time.perf_counter() - started
        _await_builds(server, log, builds)
        yield Served(url, ready_s, server.pid)


def _await_builds(server: subprocess.Popen[str], log: IO[str], builds: tuple[str, ...]) -> None:
    """Wait until the server's log says every build in `builds` is ready; RuntimeError if one is unavailable or
    the server exits first."""
    waiting = set(builds)
    while waiting:
        log.seek(0)
        text = log.read()
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}: {text[-2000:]}")
        for name in list(waiting):
            if f"{name} unavailable" in text:
                raise RuntimeError(f"the server's {name} is unavailable: {text[-2000:]}")
            if f"{name} ready after" in text:
                waiting.discard(name)
        time.sleep(0.2)
