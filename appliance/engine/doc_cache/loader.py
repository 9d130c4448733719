"""Reads chunk files off the engine thread: a disk load is started when a request is admitted to the document
cache, and the request waits in the scheduler until its KV is in memory, so a step never waits on a file."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from appliance.engine.doc_cache.disk import DiskTier
from appliance.engine.doc_cache.tier import ChunkEntry


class DiskLoader:
    """Contract: `load(key)` returns at once with a future of the entry (None when its file is gone or broken);
    every read runs on the loader's own thread, one file at a time."""

    THREAD_NAME = "kv-disk-loader"

    def __init__(self, disk: DiskTier) -> None:
        self.disk = disk
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.THREAD_NAME)

    def load(self, key: str) -> Future[ChunkEntry | None]:
        return self._pool.submit(self.disk.get, key)
