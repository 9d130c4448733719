"""Crash safety: `kill -9` at random moments while a real collection is being ingested, ten times, each
followed by a restart. After every restart the store and the indexes agree, no acknowledged document is
lost, nothing of an unfinished job is searchable, and every interrupted job is failed with a reason.
A last run, not killed, ingests what is left: the collection ends up whole.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from retrieval.service import RetrievalService
from tests.security.figures import record

KILLS = 10
BATCHES, PER_BATCH = 12, 2
TOPICS = ["glaciers", "volcanoes", "coral reefs", "deserts", "rainforests", "tundra", "estuaries", "caves"]


def _corpus(root: Path) -> dict[str, str]:
    """Batch folders of markdown documents; returns {source path: its unique marker word}."""
    rng = random.Random(11)
    markers = {}
    for b in range(BATCHES):
        folder = root / f"batch{b}"
        folder.mkdir(parents=True)
        for d in range(PER_BATCH):
            marker = f"qx{b}m{d}{rng.randrange(10**6)}"
            topic = TOPICS[(b + d) % len(TOPICS)]
            paragraphs = [f"## Part {p}\n\nField notes on {topic}, record {marker}, section {p}: "
                          + " ".join(rng.choice(TOPICS + ["survey", "sample", "measure", "season", "site"])
                                     for _ in range(90)) for p in range(4)]
            path = folder / f"doc{b}-{d}.md"
            path.write_text(f"# {topic.title()} {marker}\n\n" + "\n\n".join(paragraphs))
            markers[str(path)] = marker
    return markers


def _check(service: RetrievalService, acked: set[str], markers: dict[str, str]) -> dict[str, int]:
    """The invariants after a restart; returns what the store holds."""
    store = service.store
    assert store.query("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')") == [(0,)]
    failed = store.query("SELECT message FROM jobs WHERE state = 'failed'")
    assert all("interrupted" in (message or "") for (message,) in failed), failed
    assert store.query("SELECT COUNT(*) FROM documents WHERE state != 'ready'") == [(0,)]  # no half document
    ready = {s for (s,) in store.query("SELECT source FROM documents WHERE state = 'ready' AND collection = 'crash'")}
    for job_id in acked:  # every file of an acknowledged job is in, or was skipped as already in
        for f in service.job(job_id).files:
            assert f.state in ("done", "skipped") and f.source in ready, (job_id, f)
    exists = "crash" in {c.name for c in service.list_collections()}
    if exists:
        index = service.indexes.get("crash", store.versions(["crash"])["crash"])
        ids = store.ready_chunk_ids("crash")
        assert np.array_equal(index.vector.ids(), ids) and np.array_equal(np.sort(index.lexical.ids), ids)
        [collection] = [c for c in service.list_collections() if c.name == "crash"]
        assert (collection.documents, collection.chunks) == (len(ready), len(ids))
    for source, marker in markers.items():  # searchable exactly when ready
        hits = service.search(marker, ["crash"], k=3, mode="bm25") if exists else []
        assert any(h.chunk.source == source for h in hits) == (source in ready), (source, source in ready)
    assert not list((service.data_dir / "indexes").rglob(".tmp-*"))
    return {"ready_documents": len(ready), "failed_jobs": len(failed)}


class Zygote:
    """Drives `crash_child`: each `start` forks a fresh ingesting process (already past its imports)."""

    def __init__(self, data_dir: Path, model_cache: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.security.crash_child", str(data_dir), str(model_cache)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.line() == "ZYGOTE"

    def line(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def start(self, batches: list[Path]) -> int:
        """Fork a process that ingests `batches`; return its pid once it has opened the store."""
        assert self.process.stdin is not None
        self.process.stdin.write(" ".join(["GO", *map(str, batches)]) + "\n")
        self.process.stdin.flush()
        pid = int(self.line().removeprefix("PID "))
        assert self.line() == "READY"
        return pid

    def finish(self, lines: list[str]) -> tuple[list[str], int]:
        """`lines` and the rest the forked process printed until it was gone, and its wait status."""
        while not (line := self.line()).startswith("EXIT "):
            lines.append(line)
        return lines, int(line.removeprefix("EXIT "))

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


def _acks(lines: list[str]) -> dict[str, str]:
    """{batch: job id} of the jobs the child reported done (a line cut by the kill is no acknowledgement)."""
    return {parts[3]: parts[1] for parts in map(str.split, lines)
            if len(parts) == 4 and parts[0] == "ACK" and parts[2] == "done"}


def _lines_before_kill(rng: random.Random, batches_left: int) -> int:
    """A random moment of the work: after up to a batch and a half of progress lines (each file settled and
    each job acknowledged print one), always leaving a whole batch to do, so the process is still at work."""
    per_batch = PER_BATCH + 1
    return rng.randrange(0, max(1, min(per_batch * 3 // 2, (batches_left - 1) * per_batch)))


@pytest.mark.timeout(900)
def test_kill_9_during_ingestion(tmp_path: Path, loaded_model, model_cache_dir: Path) -> None:
    markers = _corpus(tmp_path / "src")
    batches = sorted((tmp_path / "src").iterdir())
    data_dir = tmp_path / "data"
    rng = random.Random(5)
    acked: dict[str, str] = {}  # batch -> the job acknowledged done
    zygote = Zygote(data_dir, model_cache_dir)
    try:
        for _ in range(KILLS):
            todo = [b for b in batches if b.name not in acked]
            pid = zygote.start(todo)
            lines = [zygote.line() for _ in range(_lines_before_kill(rng, len(todo)))]
            time.sleep(rng.uniform(0.0, 0.2))
            os.kill(pid, signal.SIGKILL)
            lines, status = zygote.finish(lines)
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, lines  # it was still working
            acked |= _acks(lines)
            service = RetrievalService.open(data_dir, loaded_model.tokenizer, chunk_tokens=128)  # the restart
            try:
                interrupted_jobs = _check(service, set(acked.values()), markers)["failed_jobs"]
            finally:
                service.close()
        zygote.start([b for b in batches if b.name not in acked])
        lines, status = zygote.finish([])
        assert status == 0
        acked |= _acks(lines)
    finally:
        zygote.close()
    service = RetrievalService.open(data_dir, loaded_model.tokenizer, chunk_tokens=128)
    try:
        final = _check(service, set(acked.values()), markers)
    finally:
        service.close()
    assert final["ready_documents"] == BATCHES * PER_BATCH
    assert interrupted_jobs >= KILLS // 2  # most kills landed in the middle of a job
    record("crash", {"kill_9": KILLS, "restarts_survived": KILLS, "acknowledged_jobs": len(acked),
                     "acknowledged_lost": 0, "jobs_interrupted_and_failed_with_reason": interrupted_jobs,
                     "documents_after_last_run": final["ready_documents"]})
