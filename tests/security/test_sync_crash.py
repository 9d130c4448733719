"""Crash safety of `appliance sync`: the command, run for real in a subprocess, is killed with `kill -9` while
its ingestion job runs (after its removals and renames committed, before its publish) over a folder that was
changed (files added, changed, deleted, renamed). After the restart nothing of the killed job is visible and
the sync record says it was interrupted; the next pass converges: the collection equals the folder (sources
and content hashes), with no duplicates, and each file's marker is found in that file's document only.
(A kill while pending documents are stored is the ingestion crash test's, tests/security/test_crash.py: it
takes a 256-chunk embedding batch, too slow for this one.)"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from functools import cache
from pathlib import Path

import pytest

from appliance.engine.loader import load_tokenizer
from appliance.engine.tokenizer import TextTokenizer
from retrieval.service import RetrievalService
from retrieval.sync import FolderSync, synced_folders

ROOT = Path(__file__).resolve().parents[2]
NEW_FILES = 12
WORDS = ["glacier", "moraine", "basalt", "lagoon", "tundra", "estuary", "survey", "sample", "season", "ridge"]


def _write(path: Path, marker: str, rng: random.Random, paragraphs: int) -> None:
    """A markdown file of `paragraphs` chunks (each under 128 tokens), its marker in every one."""
    body = [f"## Part {p}\n\nRecord {marker}, part {p}: " + " ".join(rng.choice(WORDS) for _ in range(70))
            for p in range(paragraphs)]
    path.write_text(f"# Notes {marker}\n\n" + "\n\n".join(body))


@cache
def _tokenizer() -> TextTokenizer:
    return load_tokenizer("default")


def _open(data_dir: Path) -> RetrievalService:
    return RetrievalService.open(data_dir, _tokenizer(), chunk_tokens=128)


def _check_converged(service: RetrievalService, folder: Path, markers: dict[str, str]) -> None:
    want = {str(p.resolve()): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.md"))}
    docs = service.list_documents("kb")
    assert {d.source: d.content_hash for d in docs} == want and len(docs) == len(want)
    assert service.store.query("SELECT COUNT(*) FROM documents WHERE state != 'ready'") == [(0,)]
    for source, marker in markers.items():  # every hit for the marker is that file's, and there is one
        hits = service.search(marker, ["kb"], k=8, mode="bm25")
        found = {h.chunk.source for h in hits if marker in h.chunk.text}
        assert found == {source}, (marker, found)


@pytest.mark.timeout(600)
def test_kill_9_mid_sync_then_the_next_pass_converges(tmp_path: Path) -> None:
    rng = random.Random(7)
    folder, data_dir = tmp_path / "notes", tmp_path / "data"
    folder.mkdir()
    markers: dict[str, str] = {}  # source -> its unique marker word

    def put(name: str, paragraphs: int = 1) -> None:
        marker = f"qx{name.replace('-', '')}{rng.randrange(10**6)}"
        _write(folder / f"{name}.md", marker, rng, paragraphs)
        markers[str((folder / f"{name}.md").resolve())] = marker

    for n in range(8):
        put(f"base-{n}")
    service = _open(data_dir)
    try:
        FolderSync(service).run("kb", folder)  # the collection the kill interrupts the update of
    finally:
        service.close()
    (folder / "base-0.md").unlink()
    del markers[str((folder / "base-0.md").resolve())]
    old, new = (folder / "base-1.md").resolve(), (folder / "moved-1.md").resolve()
    old.rename(new)
    markers[str(new)] = markers.pop(str(old))
    put("base-2")  # changed
    for n in range(NEW_FILES):
        put(f"new-{n}", paragraphs=2)

    env = {**os.environ, "APPLIANCE_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen([sys.executable, "-m", "appliance.cli", "sync", str(folder), "-c", "kb",
                              "--chunk-tokens", "128"], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watcher = _open(data_dir)  # another process's view of the store while the child works
    try:
        deadline = time.monotonic() + 240
        running = False
        while child.poll() is None and time.monotonic() < deadline:
            running = bool(watcher.store.query("SELECT 1 FROM jobs WHERE state = 'running' AND collection = 'kb'"))
            if running:
                break
            time.sleep(0.02)
        assert running, "the sync's job never ran"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        watcher.close()

    service = _open(data_dir)  # the restart: the killed job's pending rows go
    try:
        assert service.store.query("SELECT COUNT(*) FROM documents WHERE state != 'ready'") == [(0,)]
        [record] = synced_folders(service.store)
        assert record.state == "interrupted" and "exited" in (record.error or "")
        [(failed_job,)] = service.store.query("SELECT message FROM jobs WHERE state = 'failed'")
        assert "interrupted" in failed_job
        sources = {d.source for d in service.list_documents("kb")}
        assert not any("/new-" in s for s in sources)  # nothing of the killed job is visible
        assert str(new) in sources and str(old) not in sources  # its removals and renames had committed

        report = FolderSync(service).run("kb", folder)
        assert report.counts()["added"] == NEW_FILES and report.counts()["changed"] == 1 and not report.failed
        _check_converged(service, folder, markers)
        assert synced_folders(service.store)[0].state == "done"
        assert FolderSync(service).run("kb", folder).plan.empty  # and stays converged
    finally:
        service.close()
