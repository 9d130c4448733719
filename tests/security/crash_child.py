"""The processes the crash test kills.

`python -m tests.security.crash_child DATA_DIR MODEL_CACHE` starts a zygote: it imports the libraries and
loads the embedder's weights once (computing nothing: a process that has run OpenMP work cannot fork safely)
and prints `ZYGOTE`; then for each line `GO BATCH_DIR...` on stdin it forks a fresh ingesting process,
prints `PID <pid>`, and `EXIT <status>` once that one is gone.

Each forked process opens the retrieval service (which recovers what a killed predecessor left), warms up
(one small file into collection `warm-up`: parser worker and embedder started), prints `READY`, then
ingests each batch folder as one job into collection `crash`, printing `FILE <state>` as each file settles
and `ACK <job_id> <state> <batch>` the moment its job reports finished (what an `appliance ingest` user is
told). The test kills it after a random number of these lines.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from appliance.engine.loader import load_tokenizer
from retrieval.embed import shared_embedder
from retrieval.jobs import FileEvent
from retrieval.service import RetrievalService


def ingest(data_dir: Path, model_cache: Path, batches: list[Path]) -> None:
    service = RetrievalService.open(data_dir, load_tokenizer("default", model_cache), chunk_tokens=128)
    warm = data_dir.parent / f"warm-up-{os.getpid()}.md"  # so that the kills land in the work itself
    warm.write_text(f"# Warm up\n\nProcess {os.getpid()} starts.")
    service.ingest_paths("warm-up", [warm])
    print("READY", flush=True)

    def settled(event: FileEvent) -> None:
        print(f"FILE {event.state}", flush=True)

    for batch in batches:
        status = service.ingest_paths("crash", sorted(batch.iterdir()), progress=settled)
        print(f"ACK {status.job_id} {status.state} {batch.name}", flush=True)
    service.close()


def zygote(data_dir: Path, model_cache: Path) -> None:
    shared_embedder("default", "auto").device  # noqa: B018  (weights loaded, nothing computed: fork-safe)
    print("ZYGOTE", flush=True)
    for command in sys.stdin:
        words = command.split()
        if words[:1] != ["GO"]:
            return
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                ingest(data_dir, model_cache, [Path(w) for w in words[1:]])
                code = 0
            finally:
                sys.stdout.flush()
                os._exit(code)
        print(f"PID {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"EXIT {status}", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    zygote(Path(sys.argv[1]), Path(sys.argv[2]))
