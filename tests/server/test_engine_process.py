"""The server over an engine in its own process: when that process dies mid-stream, every stream ends with an
error event (never a hang), `/ready` turns 503 and new requests are refused with 503, while the API answers."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx

from appliance.config import Settings
from appliance.engine.process_engine import ProcessEngine
from appliance.server.app import create_app
from retrieval.service import RetrievalService
from tests.reference_engine import reference_config
from tests.server.conftest import served


class _Reader(threading.Thread):
    """Reads one SSE response to its end, keeping its `data:`/`event:` lines."""

    def __init__(self, url: str, body: dict) -> None:
        super().__init__(daemon=True)
        self.url, self.body = url, body
        self.lines: list[str] = []
        self.started = threading.Event()

    def run(self) -> None:
        with httpx.stream("POST", self.url, json=self.body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith(("data: ", "event: ")):
                    self.lines.append(line)
                if '"content"' in line or "event: token" in line:
                    self.started.set()


def test_an_engine_process_that_dies_ends_every_stream_with_an_error(loaded_model, model_cache_dir: Path,
                                                                    rag_data_dir: Path) -> None:
    engine = ProcessEngine.start(reference_config(model_cache_dir), max_queue=8)
    service = RetrievalService.open(rag_data_dir, loaded_model.tokenizer, chunk_tokens=128)
    try:
        with served(create_app(Settings(data_dir=rag_data_dir), engine, "smollm2", retrieval=service)) as url:
            chat = _Reader(f"{url}/v1/chat/completions", {
                "messages": [{"role": "user", "content": "Write a long story about the sea, in many paragraphs."}],
                "max_tokens": 300, "temperature": 0, "stream": True})
            ask = _Reader(f"{url}/api/ask", {"question": "How tall is Olympus Mons?", "collection": "space",
                                             "max_tokens": 300, "stream": True})
            for reader in (chat, ask):
                reader.start()
            assert chat.started.wait(60) and ask.started.wait(60)
            os.kill(engine.process.pid, signal.SIGKILL)
            killed = time.monotonic()
            for reader in (chat, ask):
                reader.join(10)
                assert not reader.is_alive()  # the stream ended
            assert time.monotonic() - killed < 10
            error = json.loads(chat.lines[-1].removeprefix("data: "))["error"]
            assert error["type"] == "engine_unavailable" and "exit code -9" in error["message"]
            assert ask.lines[-2:-1] == ["event: error"] and "engine_unavailable" in ask.lines[-1]
            ready = httpx.get(f"{url}/ready")
            assert ready.status_code == 503 and ready.json()["status"] == "engine_down"
            assert httpx.get(f"{url}/health").status_code == 200
            refused = httpx.post(f"{url}/v1/completions", json={"prompt": "Hello", "max_tokens": 4})
            assert refused.status_code == 503 and refused.json()["error"]["type"] == "engine_unavailable"
            assert httpx.get(f"{url}/metrics").status_code == 200
    finally:
        service.close()
        engine.close()
