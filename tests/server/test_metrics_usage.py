"""/metrics after real traffic, usage per key and collection at /api/admin/usage, request ids."""

from __future__ import annotations

import logging

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance.server.deps import Principal, current_principal
from tests.server.conftest import Server

SERVER_SETTINGS = {"admin_key": "s3cret"}
ADMIN = {"Authorization": "Bearer s3cret"}


def _scrape(url: str) -> dict[str, float]:
    """Every sample (histogram `_count`/`_sum` and counter `_total` included) by name."""
    text = httpx.get(f"{url}/metrics", headers=ADMIN).text
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
            if not s.name.endswith("_bucket") and not s.name.endswith("_created")}


def _ask(url: str, question: str, headers: dict[str, str] | None = None) -> dict:
    r = httpx.post(f"{url}/api/ask", headers=headers or ADMIN, timeout=60,
                   json={"question": question, "collection": "space", "k": 2, "max_tokens": 12})
    assert r.status_code == 200, r.text
    return r.json()


def test_metrics_present_and_increasing(rag_server: Server) -> None:
    url = rag_server.url
    before = _scrape(url)
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "rag_ingestion_documents", "rag_ingestion_jobs_done"):
        assert name in before, name
    assert before["rag_ingestion_documents"] == 5
    _ask(url, "Which planet is red?")
    _ask(url, "Which planet is red?")  # the same passages again: the prefix cache hits
    chat = httpx.post(f"{url}/v1/chat/completions", headers=ADMIN, timeout=60,
                      json={"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 6})
    assert chat.status_code == 200
    after = _scrape(url)
    grew = ["vllm:time_to_first_token_seconds_count", "vllm:e2e_request_latency_seconds_count",
            "vllm:inter_token_latency_seconds_count", "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
            "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "rag_tokens_computed_total",
            "rag_tokens_reused_total", "rag_retrieval_latency_seconds_count"]
    for name in grew:
        assert after[name] > before.get(name, 0), name
    assert after["vllm:e2e_request_latency_seconds_count"] - before["vllm:e2e_request_latency_seconds_count"] == 3
    assert after["rag_retrieval_latency_seconds_count"] - before["rag_retrieval_latency_seconds_count"] == 2
    assert 0 <= after["vllm:kv_cache_usage_perc"] <= 1


def test_usage_per_key_and_collection(rag_server: Server) -> None:
    url = rag_server.url
    assert httpx.get(f"{url}/api/admin/usage").status_code == 401
    start = httpx.get(f"{url}/api/admin/usage", headers=ADMIN).json()
    answer = _ask(url, "When did Apollo 11 land?")
    rag_server.app.dependency_overrides[current_principal] = lambda: Principal("reader-1", "reader",
                                                                               frozenset({"space"}))
    try:
        reader_answer = _ask(url, "When did Apollo 11 land?", headers={})
    finally:
        rag_server.app.dependency_overrides.pop(current_principal)
    usage = httpx.get(f"{url}/api/admin/usage", headers=ADMIN).json()
    admin_before = start["keys"].get("admin", {"requests": 0, "generated_tokens": 0})
    admin = usage["keys"]["admin"]
    assert admin["requests"] == admin_before["requests"] + 1
    assert admin["generated_tokens"] - admin_before["generated_tokens"] == answer["usage"]["completion_tokens"]
    reader = usage["keys"]["reader-1"]
    assert reader["requests"] == 1
    assert reader["prompt_tokens_computed"] == reader_answer["kv"]["tokens_computed"]
    assert reader["prompt_tokens_reused"] == reader_answer["kv"]["tokens_reused"] > 0  # same prompt again
    assert reader["engine_seconds"] > 0
    space = usage["collections"]["space"]
    assert space["requests"] >= 2 and set(usage["collections"]) == {"space"}


def test_request_id_is_returned_and_logged(rag_server: Server, caplog: pytest.LogCaptureFixture) -> None:
    from appliance.server.logging import RequestIdFilter

    caplog.handler.addFilter(RequestIdFilter())  # as configure_logging does on its handlers
    with caplog.at_level(logging.INFO, logger="appliance.access"):
        given = httpx.get(f"{rag_server.url}/health", headers={"X-Request-ID": "trace-42"})
        generated = httpx.get(f"{rag_server.url}/health", headers={"X-Request-ID": "bad id with spaces"})
    assert given.headers["x-request-id"] == "trace-42"
    assert len(generated.headers["x-request-id"]) == 32
    lines = [(r.request_id, r.getMessage()) for r in caplog.records if r.name == "appliance.access"]
    assert ("trace-42", "method=GET path=/health status=200") in [(rid, m.rsplit(" ", 1)[0]) for rid, m in lines]


def test_one_engine_is_not_a_cluster(rag_server: Server) -> None:
    assert httpx.get(f"{rag_server.url}/api/admin/cluster").status_code == 401  # admin only, as every admin route
    response = httpx.get(f"{rag_server.url}/api/admin/cluster", headers=ADMIN)
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_a_cluster"
    metrics = httpx.get(f"{rag_server.url}/metrics", headers=ADMIN).text
    assert "vllm:generation_tokens_total{model_name=" in metrics and 'replica="' not in metrics


def test_log_lines_carry_the_request_id_and_a_logger_that_passes_its_own_keeps_it(
        capsys: pytest.CaptureFixture[str]) -> None:
    """`configure_logging`'s lines: the id of the request being handled (`-` outside one); Ray Serve's loggers
    pass `extra={"request_id": ...}` (in a cluster's Api replica): logging must not refuse the record, and the id
    written is theirs."""
    from appliance.server.logging import configure_logging, request_id_var

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging("info")
        token = request_id_var.set("ours")
        try:
            # a logger of its own: Ray's "ray.serve" does not reach the root handlers once Ray Serve has started
            logging.getLogger("tests.own_ids").info("from ray", extra={"request_id": "theirs"})
            logging.getLogger("appliance.access").info("from us")
        finally:
            request_id_var.reset(token)
        logging.getLogger("appliance.access").info("outside")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" ", 3)[3] for line in lines[-3:]] == [
        "tests.own_ids request_id=theirs from ray", "appliance.access request_id=ours from us",
        "appliance.access request_id=- outside"], lines
