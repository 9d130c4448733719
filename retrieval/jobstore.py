"""Job records in the store: a job per ingestion request, a row per file (archives add their entries)."""

from __future__ import annotations

import os
import time
import uuid

from retrieval.errors import NotFoundError
from retrieval.owner import current_owner, owner_alive
from retrieval.store import Store
from retrieval.types import FileState, JobFile, JobState, JobStatus


class JobRecords:
    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, collection: str, sources: list[str]) -> str:
        job_id = "job_" + uuid.uuid4().hex[:16]
        with self.store.transaction() as db:
            db.execute(
                "INSERT INTO jobs(job_id, collection, state, created_at, pid, owner) VALUES (?, ?, 'queued', ?, ?, ?)",
                (job_id, collection, time.time(), os.getpid(), current_owner()),
            )
            db.executemany(
                "INSERT INTO job_files(job_id, seq, source, state) VALUES (?, ?, ?, 'pending')",
                [(job_id, i, s) for i, s in enumerate(sources)],
            )
        return job_id

    def add_file(self, job_id: str, source: str) -> int:
        with self.store.transaction() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM job_files WHERE job_id = ?", (job_id,)).fetchone()[
                0
            ]
            db.execute(
                "INSERT INTO job_files(job_id, seq, source, state) VALUES (?, ?, ?, 'pending')",
                (job_id, seq, source),
            )
        return int(seq)

    def set_file(
        self,
        job_id: str,
        seq: int,
        state: FileState,
        error: str | None = None,
        doc_id: str | None = None,
        chunks: int = 0,
    ) -> None:
        with self.store.transaction() as db:
            db.execute(
                "UPDATE job_files SET state = ?, error = ?, doc_id = ?, chunks = ? WHERE job_id = ? AND seq = ?",
                (state, error, doc_id, chunks, job_id, seq),
            )

    def set_state(self, job_id: str, state: JobState, message: str | None = None) -> None:
        finished = time.time() if state in ("done", "failed") else None
        with self.store.transaction() as db:
            db.execute(
                "UPDATE jobs SET state = ?, message = COALESCE(?, message), finished_at = ?, pid = ?, owner = ? "
                "WHERE job_id = ?",
                (state, message, finished, os.getpid(), current_owner(), job_id),
            )

    def get(self, job_id: str) -> JobStatus:
        rows = self.store.query(
            "SELECT job_id, collection, state, created_at, finished_at, message FROM jobs WHERE job_id = ?",
            (job_id,),
        )
        if not rows:
            raise NotFoundError(f"job {job_id!r} does not exist")
        job_id, collection, state, created, finished, message = rows[0]
        files = [
            JobFile(*r)
            for r in self.store.query(
                "SELECT source, state, error, doc_id, chunks FROM job_files WHERE job_id = ? ORDER BY seq",
                (job_id,),
            )
        ]
        done = sum(f.state != "pending" for f in files)
        return JobStatus(job_id, collection, state, done, len(files), created, finished, message, files)

    def recover_interrupted(self) -> list[str]:
        """Settle the queued/running jobs whose process is gone (see `retrieval.owner`): one that got past its
        publish (`finished_at` set) is done; any other is failed with a reason and its pending documents are
        dropped. Returns the failed ones. Jobs of a live process (another server, `appliance ingest`) stay."""
        lost: list[str] = []
        for job_id, owner, published in self.store.query(
            "SELECT job_id, owner, finished_at FROM jobs WHERE state IN ('queued', 'running')"
        ):
            if owner is not None and owner_alive(owner):
                continue
            if published is not None:
                self.set_state(job_id, "done")
            else:
                lost.append(job_id)
        for job_id in lost:
            self.store.discard_pending(job_id)
            with self.store.transaction() as db:
                db.execute(  # files stored as pending were dropped with their job: none of them got in
                    "UPDATE job_files SET state = 'failed', error = 'interrupted', doc_id = NULL, chunks = 0 "
                    "WHERE job_id = ? AND state IN ('pending', 'done')",
                    (job_id,),
                )
            self.set_state(job_id, "failed", "interrupted: the process running it exited; submit the files again")
        return lost

    def counts_by_state(self) -> dict[str, int]:
        """How many jobs are in each state (states without jobs absent)."""
        return dict(self.store.query("SELECT state, COUNT(*) FROM jobs GROUP BY state"))
