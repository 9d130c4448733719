"""`appliance serve` stops cleanly on SIGTERM: not ready at once, in-flight streams finish, exit code 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.server.conftest import free_port, wait_until_ready


def test_sigterm_during_a_stream_finishes_it_and_exits_cleanly(model_cache_dir: Path, loaded_model,
                                                                tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    env = {**os.environ, "APPLIANCE_DEVICE": "cpu", "APPLIANCE_KV_CACHE_MB": "64", "HF_HUB_OFFLINE": "1"}
    # the data dir holds the converted weights of the session's model, so the server starts fast
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "serve", "--port", str(port),
                                 "--data-dir", str(model_cache_dir)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        assert wait_until_ready(url, proc, 90), log_path.read_text()[-2000:]
        body = {"messages": [{"role": "user", "content": "Write a short poem about the sea."}],
                "max_tokens": 40, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60,
                          headers={"X-Request-ID": "sigterm-stream"}) as r:
            lines = (line for line in r.iter_lines() if line.startswith("data: "))
            received = [next(lines), next(lines)]
            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            try:
                ready = httpx.get(f"{url}/ready", timeout=2).status_code
            except httpx.TransportError:
                ready = None  # the listening socket is already closed: also "not ready"
            assert ready in (None, 503)
            received += list(lines)  # the stream in flight is given its grace period and finishes
        assert received[-1] == "data: [DONE]"
        assert len(received) > 5
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - signalled < 20
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = log_path.read_text()
    assert "request_id=sigterm-stream" in log and "Traceback" not in log
