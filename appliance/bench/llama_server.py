"""llama.cpp's own C++ OpenAI server, `llama-server`: the peer of `appliance serve` in the benchmarks that measure
what a client sees (what an Ollama or llama.cpp user gets). `make bench-extra` builds it from the source vendored
in the llama-cpp-python sdist (scripts/build_llama_server.sh) into the virtual environment's bin."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from appliance.bench.served import free_port, running

ENV_VAR = "APPLIANCE_BENCH_LLAMA_SERVER"  # a llama-server binary to use instead of the one `make bench-extra` built


def find_llama_server() -> Path | None:
    """The llama-server binary: $APPLIANCE_BENCH_LLAMA_SERVER, else the one beside this Python (the venv's bin),
    else one on PATH; None when there is none."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    beside = Path(sys.executable).parent / "llama-server"
    if beside.is_file():
        return beside
    found = shutil.which("llama-server")
    return Path(found) if found else None


@contextmanager
def llama_serving(binary: Path, model_path: Path, slots: int, context_per_slot: int, threads: int = 2
                  ) -> Iterator[str]:
    """Run `binary` on `model_path` with `slots` parallel sequences of `context_per_slot` tokens each (continuous
    batching, flash attention: its faster setting on a CPU) on a free port; yield its URL once /health says the
    model is loaded; stop it. Raises RuntimeError with its log's tail if it exits first."""
    port = free_port()
    command = [str(binary), "--model", str(model_path), "--host", "127.0.0.1", "--port", str(port),
               "--threads", str(threads), "--threads-batch", str(threads), "--parallel", str(slots),
               "--ctx-size", str(slots * context_per_slot), "--flash-attn", "on", "--no-webui"]
    url = f"http://127.0.0.1:{port}"
    with running(command, None, url + "/health", "llama-server"):
        yield url
