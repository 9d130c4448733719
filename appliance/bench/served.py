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
def serving(env: dict[str, str]) -> Iterator[Served]:
    """Start `appliance serve` with `env` (APPLIANCE_* on top of this process's environment) on a free port,
    wait for /ready, yield it, stop it (SIGTERM). Raises RuntimeError with its log's tail if it exits first."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **env, "APPLIANCE_PORT": str(port)}
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: nobody reads it until the server has failed
        server = subprocess.Popen([sys.executable, "-m", "appliance.cli", "serve", "--log-level", "warning"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
        try:
            while server.poll() is None:
                try:
                    if httpx.get(url + "/ready", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
            else:
                log.seek(0)
                raise RuntimeError(f"the server exited with {server.returncode}: {log.read()[-2000:]}")
            yield Served(url, time.perf_counter() - started, server.pid)
        finally:
            server.terminate()
            server.wait(timeout=60)
