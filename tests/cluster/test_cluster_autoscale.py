"""Autoscaling, live: an engine deployment of one replica (autoscaled between one and two, aiming at one request
per replica) gains a second replica while requests keep coming, both serve, and it goes back to one when they
stop; every request is answered throughout."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from appliance.cluster.app import ClusterPlan
from tests.cluster.conftest import Cluster, cluster_settings, serving

pytestmark = pytest.mark.slow

# Ray Serve's handles and replicas report their load every 10 s by default: once a second here, so the test
# waits seconds for a decision rather than tens of seconds (read when Ray starts its workers)
FAST_METRICS = {"RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
                "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1"}


@pytest.fixture
def autoscaled(rag_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    import ray

    for name, value in FAST_METRICS.items():
        monkeypatch.setenv(name, value)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    plan = ClusterPlan(replicas=1, min_replicas=1, max_replicas=2, target_ongoing_requests=1, upscale_delay_s=0,
                       downscale_delay_s=2, threads_per_replica=1, app_name="appliance-autoscale")
    try:
        with serving(cluster_settings(rag_data_dir, tmp_path / "data"), plan) as cluster:
            yield cluster
    finally:
        ray.shutdown()


def test_replicas_are_added_under_load_and_removed_after(autoscaled: Cluster) -> None:
    body = {"prompt": "The planets of the solar system are", "max_tokens": 48, "temperature": 0}
    codes: list[int] = []
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            codes.append(httpx.post(f"{autoscaled.url}/v1/completions", json=body, timeout=120).status_code)

    clients = [threading.Thread(target=keep_asking) for _ in range(3)]
    for client in clients:
        client.start()
    try:
        # three requests in flight against a target of one a replica: a second replica joins and takes some
        autoscaled.wait_for(lambda replicas: len(replicas) == 2, timeout_s=150)
        autoscaled.wait_for(lambda replicas: all(r["served"] > 0 for r in replicas), timeout_s=60)
    finally:
        stop.set()
        for client in clients:
            client.join()
    assert codes and set(codes) == {200}, codes
    # idle: back to one replica, which still answers
    autoscaled.wait_for(lambda replicas: len(replicas) == 1, timeout_s=150)
    assert httpx.post(f"{autoscaled.url}/v1/completions", json=body, timeout=120).status_code == 200
