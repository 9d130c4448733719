"""`appliance ask` in its own process over an ingested data dir: streamed text with sources, or JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _ask(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "APPLIANCE_DEVICE": "cpu", "APPLIANCE_KV_CACHE_MB": "64", "HF_HUB_OFFLINE": "1",
           "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "appliance.cli", "ask", *args, "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=120, env=env)


def test_ask_json_and_rich_output(rag_data_dir: Path, model_cache_dir: Path) -> None:
    models = rag_data_dir / "models"
    if not models.exists():  # reuse the session's converted weights instead of converting again
        models.symlink_to(model_cache_dir / "models", target_is_directory=True)
    r = _ask(rag_data_dir, "What is the Great Red Spot?", "--collection", "space", "--k", "2", "--json",
             "--max-tokens", "32")
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    assert set(body) >= {"answer", "citations", "sources", "usage", "timings", "kv"}
    assert body["answer"].strip() and "Jupiter" in {s["title"] for s in body["sources"]}
    assert all(1 <= c["n"] <= len(body["sources"]) for c in body["citations"])
    r = _ask(rag_data_dir, "What is the Great Red Spot?", "--collection", "space", "--k", "2", "--max-tokens", "32")
    assert r.returncode == 0, r.stderr
    assert body["answer"].strip()[:20] in r.stdout and "Sources" in r.stdout and "Jupiter" in r.stdout
    r = _ask(rag_data_dir, "Anything?", "--collection", "nope")
    assert r.returncode == 1 and "does not exist" in r.stderr and "Traceback" not in r.stderr
