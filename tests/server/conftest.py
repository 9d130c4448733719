"""Server fixtures: a real uvicorn server around the real engine and a real ingested retrieval service."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from appliance.config import Settings
from appliance.engine.async_engine import AsyncEngine
from appliance.engine.engine import LLMEngine
from appliance.server.app import create_app
from retrieval.service import RetrievalService

DOCS = {
    "space": {
        "mars.md": "# Mars\n\nMars is the fourth planet from the Sun. Its red colour comes from iron oxide dust. "
                   "Olympus Mons on Mars is the tallest volcano in the solar system, about 22 kilometres high.",
        "jupiter.md": "# Jupiter\n\nJupiter is the largest planet. The Great Red Spot on Jupiter is a storm that "
                      "has lasted for centuries. Jupiter has a faint ring system and dozens of moons.",
        "moon.md": "# The Moon\n\nThe Moon orbits the Earth every 27 days. Its craters were made by impacts. "
                   "Apollo 11 landed on the Moon in 1969.",
    },
    "kitchen": {
        "bread.md": "# Bread\n\nSourdough bread rises because wild yeast in the starter ferments the flour. "
                    "Bake the loaf at 230 degrees Celsius in a covered pot for a crisp crust.",
        "pasta.md": "# Pasta\n\nFresh pasta is made from flour and eggs. Cook it in salted boiling water "
                    "for two to three minutes.",
    },
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ready(url: str, proc: subprocess.Popen, timeout_s: float) -> bool:
    """Poll `url`/ready until it answers 200 (True), the server process `proc` exits or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/ready").status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.2)  # 503 while it warms up
    return False


@contextmanager
def served(app: FastAPI, timeout_s: float = 60) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port in a thread; yield its URL once /ready is 200."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready").status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.1)  # 503 while it warms up
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture(scope="session")
def rag_data_dir(tmp_path_factory: pytest.TempPathFactory, loaded_model) -> Path:
    """A data dir with the collections of DOCS ingested (chunks of at most 128 tokens)."""
    root = tmp_path_factory.mktemp("rag")
    service = RetrievalService.open(root / "data", loaded_model.tokenizer, chunk_tokens=128)
    try:
        for collection, files in DOCS.items():
            paths = []
            for name, text in files.items():
                (root / name).write_text(text)
                paths.append(root / name)
            assert service.ingest_paths(collection, paths).state == "done"
    finally:
        service.close()
    return root / "data"


@dataclass
class Server:
    url: str
    app: FastAPI
    engine: LLMEngine


@pytest.fixture(scope="module")
def rag_server(make_engine, loaded_model, rag_data_dir: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    """A served app over `rag_data_dir`; a test module may set `SERVER_SETTINGS` (Settings overrides)."""
    overrides = getattr(request.module, "SERVER_SETTINGS", {})
    settings = Settings(data_dir=rag_data_dir, **overrides)
    engine = make_engine(max_num_seqs=8)
    service = RetrievalService.open(rag_data_dir, loaded_model.tokenizer, chunk_tokens=128)
    app = create_app(settings, AsyncEngine(engine, max_queue=settings.max_queue), "smollm2", retrieval=service)
    with served(app) as url:
        yield Server(url, app, engine)
    service.close()
