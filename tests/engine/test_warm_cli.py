"""`appliance ingest --warm` and `appliance warm`: every chunk of a collection pre-encoded into the disk tier."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PAGES = {"tea.md": "# Tea\n\nGreen tea is steeped at 80 degrees for two minutes.",
         "coffee.md": "# Coffee\n\nEspresso is brewed under nine bars of pressure in about 25 seconds."}


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "APPLIANCE_DEVICE": "cpu", "APPLIANCE_KV_CACHE_MB": "64", "HF_HUB_OFFLINE": "1",
           "COLUMNS": "200", "APPLIANCE_DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_ingest_warm_then_warm_again(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in PAGES.items():
        (docs / name).write_text(text)
    data = tmp_path / "data"  # fresh: this first process converts the model, the next one reads its cache
    r = _cli(data, "ingest", str(docs), "--collection", "drinks", "--warm")
    assert r.returncode == 0, r.stderr
    assert "2 chunks, 2 encoded now" in r.stdout
    files = list((data / "kvcache").glob("*/*/*.safetensors"))
    assert len(files) == 2
    r = _cli(data, "warm", "--collection", "drinks")
    assert r.returncode == 0, r.stderr
    assert "2 chunks, 0 encoded now (2 were cached)" in r.stdout  # found by a process that read the cache
    assert len(list((data / "kvcache").iterdir())) == 1
    r = _cli(data, "warm", "--collection", "nope")
    assert r.returncode == 1 and "no collection named 'nope'" in r.stderr and "Traceback" not in r.stderr
