"""Cluster fixtures: the ingested data dir of the server tests, shared with them; an application started on the
Ray cluster of the caller, seen through its HTTP API."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from appliance.config import Settings
from tests.server.conftest import free_port, rag_data_dir  # noqa: F401 - rag_data_dir: a fixture, found by name

if TYPE_CHECKING:  # Ray is imported by the tests that start one (the router's and the ledger's run without)
    from appliance.cluster.app import ClusterPlan


@dataclass
class Cluster:
    url: str
    settings: Settings

    def replicas(self) -> list[dict]:
        response = httpx.get(f"{self.url}/api/admin/cluster", timeout=10)
        assert response.status_code == 200, response.text
        return response.json()["replicas"]

    def served(self) -> dict[str, int]:
        return {r["replica_id"]: r["served"] for r in self.replicas()}

    def wait_for(self, condition: Callable[[list[dict]], bool], timeout_s: float = 15) -> list[dict]:
        """Poll the replicas' reports (about a second old) until `condition` holds; fail after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            replicas = self.replicas()
            if condition(replicas):
                return replicas
            assert time.monotonic() < deadline, f"still {replicas}"
            time.sleep(0.25)



def cluster_settings(source: Path, data_dir: Path) -> Settings:
    """Copy the ingested data dir `source` to `data_dir` (a cluster's tests ingest and delete there) and return
    the settings of a test cluster over it."""
    shutil.copytree(source, data_dir)
    return Settings(data_dir=data_dir, port=free_port(), dtype="float32", kv_cache_mb=256, compiled_decode=False,
                    doc_cache="blend", warmup_tokens=200)


@contextmanager
def serving(settings: Settings, plan: ClusterPlan) -> Iterator[Cluster]:
    """Start `plan`'s application on the Ray cluster this process is connected to; yield it once it is ready and
    every replica has reported; delete it (and stop Serve) after."""
    from ray import serve

    from appliance.cluster.serve import start_cluster, stop_cluster

    start_cluster(settings, plan)
    url = f"http://127.0.0.1:{settings.port}"
    try:
        deadline = time.monotonic() + 120
        while httpx.get(f"{url}/ready", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the cluster never became ready"
            time.sleep(0.5)
        found = Cluster(url, settings)
        found.wait_for(lambda replicas: len(replicas) == plan.replicas)
        yield found
    finally:
        stop_cluster(plan)
        serve.shutdown()
