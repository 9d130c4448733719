"""Conversations survive a restart, and `kill -9` of the server during a turn leaves no half-written turn:
the conversation reads back with its finished turns only, and goes on from there (a real `appliance serve`
process, killed while it streams an answer)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from retrieval.service import RetrievalService
from tests.server.conftest import DOCS, free_port, wait_until_ready


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, loaded_model, model_cache_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("conversation-crash")
    data = root / "data"
    data.mkdir()
    (data / "models").symlink_to(model_cache_dir / "models", target_is_directory=True)  # no second conversion
    service = RetrievalService.open(data, loaded_model.tokenizer, chunk_tokens=128)
    try:
        paths = []
        for name, text in DOCS["space"].items():
            (root / name).write_text(text)
            paths.append(root / name)
        assert service.ingest_paths("space", paths).state == "done"
    finally:
        service.close()
    return data


@contextmanager
def _server(data: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    port = free_port()
    env = {**os.environ, "APPLIANCE_WARMUP_TOKENS": "0", "APPLIANCE_ENGINE_PROCESS": "false",
           "APPLIANCE_COMPILED_DECODE": "false", "APPLIANCE_KV_CACHE_MB": "128"}
    log = data.parent / "serve.log"
    with open(log, "a") as out:
        proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "serve", "--data-dir", str(data), "--port",
                                 str(port)], env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_until_ready(url, proc, 180), log.read_text()[-2000:]
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


def _ask(url: str, question: str, conversation_id: str | None = None) -> dict:
    body = {"question": question, "collection": "space", "k": 2, "max_tokens": 8,
            **({"conversation_id": conversation_id} if conversation_id else {})}
    r = httpx.post(f"{url}/api/ask", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_kill_during_a_turn_leaves_the_finished_turns_only(data_dir: Path) -> None:
    with _server(data_dir) as (url, proc):
        first = _ask(url, "What is the tallest volcano on Mars?")
        conversation_id = first["conversation_id"]
        events = []
        with httpx.stream("POST", f"{url}/api/ask", timeout=120, json={
                "question": "Tell me everything about it, in detail.", "collection": "space", "k": 2,
                "max_tokens": 400, "stream": True, "conversation_id": conversation_id}) as r:
            for line in r.iter_lines():
                if line.startswith("event: "):
                    events.append(line.removeprefix("event: "))
                if events and events[-1] == "token":
                    os.kill(proc.pid, signal.SIGKILL)  # mid-answer: its tokens are streaming
                    break
        assert proc.wait(timeout=30) == -signal.SIGKILL and "done" not in events
    with _server(data_dir) as (url, _):
        saved = httpx.get(f"{url}/api/conversations/{conversation_id}").json()
        assert saved["turn_count"] == 1 and [t["question"] for t in saved["turns"]] == [
            "What is the tallest volcano on Mars?"]
        assert saved["turns"][0]["answer"] == first["answer"]
        second = _ask(url, "How high is it?", conversation_id)  # the conversation goes on after the restart
        assert second["turn"] == 2 and second["turns_in_prompt"] == 1
        listed = httpx.get(f"{url}/api/conversations").json()["conversations"]
        assert [c["turn_count"] for c in listed if c["conversation_id"] == conversation_id] == [2]
