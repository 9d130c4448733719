"""`appliance bench api`'s plumbing around the servers it measures: finding llama.cpp's llama-server, starting it,
waiting for a server's background builds, and the report's comparison with llama-server."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

import pytest

from appliance.bench.api_load import PEER, REFERENCE, api_markdown
from appliance.bench.llama_server import ENV_VAR, find_llama_server, llama_serving
from appliance.bench.served import _await_builds


def _figures(one: float, many: float) -> dict[str, dict[str, float]]:
    return {"1": {"tok_s": one, "itl_p50_ms": 10.0, "itl_p99_ms": 20.0},
            "16": {"tok_s": many, "itl_p50_ms": 30.0, "itl_p99_ms": 60.0}}


def _result(summary: dict[str, dict[str, dict[str, float]]]) -> dict[str, object]:
    machine = {"cpu": "test CPU", "cores": 2, "memory": "1 GiB", "torch": "x", "load_average": "0 0 0"}
    return {"machine": machine, "repeats": 1, "decode_tokens": 96, "decode": "fused decode", "engine_nice": 10,
            "summary": summary}


def test_the_report_compares_the_engine_process_with_llama_server() -> None:
    summary = {REFERENCE: _figures(150, 600), "engine process": _figures(120, 540), PEER: _figures(80, 150)}
    text = api_markdown(_result(summary))
    assert "| 1 stream, ours / llama-server | 1.50x |" in text
    assert "| 16 streams, ours / llama-server's 16 slots | 3.60x |" in text
    assert "| 16 streams, ours / llama-server's single stream | 6.75x |" in text
    assert "| engine process | 120.0 | 10 / 20 | 540.0 | 30 / 60 | 0.90x |" in text
    assert f"| {PEER} | 80.0 | 10 / 20 | 150.0 | 30 / 60 | - |" in text  # no API / in-process ratio for the peer


def test_without_llama_server_the_report_has_no_comparison() -> None:
    summary = {REFERENCE: _figures(150, 600), "engine process": _figures(120, 540)}
    assert "ours / llama-server" not in api_markdown(_result(summary))


def test_llama_server_is_found_by_the_variable_then_beside_python(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert find_llama_server() is None
    (tmp_path / "llama-server").write_text("")
    assert find_llama_server() == tmp_path / "llama-server"
    monkeypatch.setenv(ENV_VAR, "/opt/llama/llama-server")
    assert find_llama_server() == Path("/opt/llama/llama-server")


def test_a_llama_server_that_exits_at_once_is_reported_with_its_log(tmp_path: Path) -> None:
    fake = tmp_path / "llama-server"
    fake.write_text("#!/bin/sh\necho 'error: failed to load model'\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(RuntimeError, match="exited with 3: error: failed to load model"), \
            llama_serving(fake, tmp_path / "model.gguf", slots=2, context_per_slot=64):
        pass


def _write_later(log: IO[str], text: str) -> None:
    time.sleep(0.3)
    log.write(text)
    log.flush()


@pytest.mark.parametrize(("lines", "error"), [
    ("INFO fused decode ready after 2.0 s\nINFO compiled decode ready after 30.1 s\n", None),
    ("INFO fused decode ready after 2.0 s\nWARNING compiled decode unavailable, eager serves (x)\n",
     "compiled decode is unavailable"),
])
def test_a_server_is_measured_only_once_its_builds_are_ready(lines: str, error: str | None) -> None:
    with tempfile.NamedTemporaryFile("w+") as log, subprocess.Popen(["sleep", "30"], text=True) as server:
        try:
            writer = threading.Thread(target=_write_later, args=(log, lines))
            writer.start()
            started = time.perf_counter()
            if error is None:
                _await_builds(server, log, ("fused decode", "compiled decode"))
                assert time.perf_counter() - started >= 0.3  # it waited for the lines
            else:
                with pytest.raises(RuntimeError, match=error):
                    _await_builds(server, log, ("fused decode", "compiled decode"))
            writer.join()
        finally:
            server.kill()


def test_a_server_that_exits_while_building_is_reported() -> None:
    with tempfile.NamedTemporaryFile("w+") as log, subprocess.Popen(["true"], text=True) as server:
        server.wait()
        with pytest.raises(RuntimeError, match="exited with 0"):
            _await_builds(server, log, ("fused decode",))
