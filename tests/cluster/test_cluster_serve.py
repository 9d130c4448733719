"""The appliance on Ray Serve with two engine replicas (one thread each) on a two-node cluster (Ray's
`cluster_utils.Cluster`: a head node, where the Api and the data dir are, and a worker node), through its HTTP
API as a client sees it: affinity keeps a question on the replica that holds its passages and splits a hot
topic when that replica's queue grows; an answer streamed through Ray equals the one-process answer; a document
ingested after the start is searched and answered from, and its deletion reaches the replicas on both nodes; a
client that goes away frees its request on its replica; a replica killed mid-stream ends that stream with an
error and the next request is served."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from appliance.cluster.app import ClusterPlan
from appliance.engine.async_engine import AsyncEngine
from appliance.engine.engine import LLMEngine
from appliance.server.app import create_app
from tests.cluster.conftest import Cluster, cluster_settings, serving
from tests.server.conftest import served

pytestmark = pytest.mark.slow

QUESTION = {"question": "How tall is Olympus Mons?", "collection": "space", "max_tokens": 16}


@pytest.fixture(scope="module")
def cluster(rag_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    import ray
    from ray.cluster_utils import Cluster as RayCluster

    nodes = RayCluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes.add_node(num_cpus=1)
    ray.init(address=nodes.address, logging_level="warning")
    # this module ingests and deletes: the shared data dir stays as it is
    settings = cluster_settings(rag_data_dir, tmp_path_factory.mktemp("cluster") / "data")
    plan = ClusterPlan(replicas=2, router="affinity", threads_per_replica=1, app_name="appliance-test")
    try:
        with serving(settings, plan) as found:
            time.sleep(2.5)  # reports taken after the API's warm-up request
            yield found
    finally:
        ray.shutdown()
        nodes.shutdown()


def _served_since(cluster: Cluster, before: dict[str, int]) -> dict[str, int]:
    time.sleep(2.5)  # a report or two later
    return {rid: n - before.get(rid, 0) for rid, n in cluster.served().items()}


def test_the_same_question_twice_lands_on_the_same_replica(cluster: Cluster) -> None:
    before = cluster.served()
    for _ in range(2):
        response = httpx.post(f"{cluster.url}/api/ask", json=QUESTION, timeout=120)
        assert response.status_code == 200, response.text
        assert response.json()["citations"] or response.json()["answer"]
    assert sorted(_served_since(cluster, before).values()) == [0, 2]
    holder = next(r for r in cluster.replicas() if r["cached_passages"])
    assert holder["doc_hits"] > 0  # the second time, its passages' KV came from the chunk tier


def test_a_hot_topic_is_split_when_one_replica_queue_grows(cluster: Cluster) -> None:
    before = cluster.served()
    body = {**QUESTION, "max_tokens": 48}
    codes: list[int] = []
    threads = [threading.Thread(target=lambda: codes.append(
        httpx.post(f"{cluster.url}/api/ask", json=body, timeout=300).status_code)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert codes == [200] * 8
    counts = sorted(_served_since(cluster, before).values())
    # the first five (queue gap 0..4) stay on the holder; past the gap the other replica takes some
    assert counts[0] >= 1 and counts[1] >= 5, counts


def test_an_answer_streamed_through_ray_equals_the_one_process_answer(cluster: Cluster, rag_data_dir: Path,
                                                                      keep_torch_threads: None) -> None:
    body = {"prompt": "The planets of the solar system are", "max_tokens": 24, "temperature": 0, "stream": True}

    def streamed(url: str) -> str:
        text = []
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    text.append(json.loads(line.removeprefix("data: "))["choices"][0]["text"])
        return "".join(text)

    through_ray = streamed(cluster.url)
    engine = LLMEngine.from_config(replace(cluster.settings.engine_config(), threads=1))
    with served(create_app(cluster.settings, AsyncEngine(engine), "smollm2")) as url:
        one_process = streamed(url)
    assert through_ray and through_ray == one_process


def test_a_document_ingested_after_the_start_is_answered_from_and_its_deletion_reaches_every_replica(
        cluster: Cluster, tmp_path: Path) -> None:
    replicas = cluster.replicas()
    assert len({r["node_id"] for r in replicas}) == 2  # one engine replica per node
    url = cluster.url
    saturn = tmp_path / "saturn.md"
    saturn.write_text("# Saturn\n\nSaturn's rings are made of ice and rock. Saturn has 146 known moons, Titan the "
                      "largest.")
    # another process, the one writer, publishes a new index snapshot into the data dir the Api serves
    ingest = subprocess.run([sys.executable, "-m", "appliance.cli", "ingest", str(saturn), "--collection", "space",
                             "--data-dir", str(cluster.settings.data_dir)], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert ingest.returncode == 0, ingest.stderr[-2000:]
    answer = httpx.post(f"{url}/api/ask", json={**QUESTION, "question": "What are Saturn's rings made of?"},
                        timeout=120).json()
    assert any("saturn" in s["source"] for s in answer["sources"]), answer  # the new snapshot was searched
    doc_id = next(d["doc_id"] for d in httpx.get(f"{url}/api/admin/collections/space/documents").json()["documents"]
                  if "saturn" in d["source"])
    time.sleep(2.5)  # reports taken after the answer's chunks were all encoded
    before = {r["replica_id"]: r["cached_passages"] for r in cluster.replicas()}
    assert httpx.delete(f"{url}/api/admin/collections/space/documents/{doc_id}").status_code == 200
    # the replica that read Saturn's passage forgets it (the board carried the invalidation to both nodes)
    cluster.wait_for(lambda now: sum(r["cached_passages"] for r in now) < sum(before.values()))


def test_metrics_show_every_replica(cluster: Cluster) -> None:
    text = httpx.get(f"{cluster.url}/metrics", timeout=10).text
    for replica in cluster.replicas():
        assert f'replica="{replica["replica_id"]}"' in text
    assert text.count("vllm:generation_tokens_total{") == 2


def _long_chat_stream(url: str, lines: list[str], started: threading.Event, stop_after: int | None = None) -> None:
    body = {"messages": [{"role": "user", "content": "Write a long story about the sea, in many paragraphs."}],
            "max_tokens": 400, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                lines.append(line)
                if '"content"' in line:
                    started.set()
                if stop_after is not None and len(lines) >= stop_after:
                    return  # the client goes away mid-stream


def test_a_client_that_goes_away_frees_its_request_on_its_replica(cluster: Cluster) -> None:
    lines: list[str] = []
    started = threading.Event()
    client = threading.Thread(target=_long_chat_stream, args=(cluster.url, lines, started, 4))
    client.start()
    assert started.wait(60)
    client.join(30)
    assert not client.is_alive() and not any("[DONE]" in line for line in lines)
    cluster.wait_for(lambda replicas: all(r["in_flight"] == 0 and r["num_running"] == 0 and r["kv_usage"] == 0
                                          for r in replicas))


def test_a_replica_killed_mid_stream_ends_its_stream_with_an_error_and_the_next_request_is_served(
        cluster: Cluster) -> None:
    lines: list[str] = []
    started = threading.Event()
    client = threading.Thread(target=_long_chat_stream, args=(cluster.url, lines, started))
    client.start()
    assert started.wait(60)
    busy = cluster.wait_for(lambda replicas: any(r["in_flight"] for r in replicas))
    victim = next(r for r in busy if r["in_flight"])
    os.kill(victim["pid"], signal.SIGKILL)
    killed = time.monotonic()
    client.join(30)
    assert not client.is_alive() and time.monotonic() - killed < 30
    error = json.loads(lines[-1].removeprefix("data: "))["error"]
    assert error["type"] == "engine_unavailable", lines[-3:]
    response = httpx.post(f"{cluster.url}/api/ask", json=QUESTION, timeout=120)
    assert response.status_code == 200, response.text
    # Ray replaces the dead replica
    cluster.wait_for(lambda replicas: len(replicas) == 2 and victim["replica_id"] not in
                     {r["replica_id"] for r in replicas}, timeout_s=90)
