"""A tiny run of `appliance bench cluster`: five markdown pages, four requests, affinity and round-robin on a Ray
Serve cluster of 2 replicas, one repeat.

Nothing here is compared; the real figures come from `appliance bench cluster` over python3.11-doc.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.bench.cluster import run_cluster_bench
from appliance.bench.cluster_report import SECTION, cluster_markdown
from appliance.bench.rag_workload import Question
from appliance.bench.report import update_section
from tests.server.conftest import DOCS

QUESTIONS = [Question("Why is Mars red?", "mars.md"), Question("How tall is Olympus Mons?", "mars.md"),
             Question("What is the Great Red Spot?", "jupiter.md"), Question("How is fresh pasta made?", "pasta.md")]
ROUTERS = ["affinity", "round-robin"]


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory: pytest.TempPathFactory, loaded_model, model_cache_dir: Path) -> dict:
    corpus = tmp_path_factory.mktemp("corpus")
    for pages in DOCS.values():
        for name, text in pages.items():
            (corpus / name).write_text(text)
    data = tmp_path_factory.mktemp("data")
    (data / "models").symlink_to(model_cache_dir / "models")  # the replicas load the session's converted model
    return run_cluster_bench(data, requests=4, concurrency=2, repeats=1, routers=ROUTERS, max_tokens=8,
                             corpus_dir=corpus, questions=QUESTIONS, loaded=loaded_model, warm=2)


def test_figures_per_router(tiny_result: dict) -> None:
    assert tiny_result["corpus"]["documents"] == 5
    sizes = tiny_result["sizes"]
    assert sizes["distinct_passages"] >= 2 and sizes["kv_cache_mb"] >= 1
    assert 0 < sizes["doc_cache_share"] < 1 and sizes["chunk_tier_mb"] > 0
    assert [run["router"] for run in tiny_result["runs"]] == ROUTERS
    for run in tiny_result["runs"]:
        assert run["requests"] == 4 and run["doc_hits"] + run["doc_misses"] > 0
        assert sum(run["shares"]) == pytest.approx(1.0) and len(run["shares"]) == 2
    assert list(tiny_result["routers"]) == ROUTERS
    for figures in tiny_result["routers"].values():
        assert 0.0 <= figures["hit_rate"] <= 1.0 and 0.5 <= figures["busiest_share"] <= 1.0
        assert 0 < figures["ttft_p50_ms"] <= figures["ttft_p95_ms"] and figures["requests_per_s"] > 0
    assert {t["label"].split(",")[0] for t in tiny_result["targets"]} >= {"TTFT p50"}
    assert set(tiny_result["ratios"]) == {"hit_rate_ratio", "ttft_p50_ratio"}


def test_table_renders_every_router_and_the_section_is_written(tiny_result: dict, tmp_path: Path) -> None:
    markdown = cluster_markdown(tiny_result)
    for router in ROUTERS:
        assert f"| {router} | " in markdown
    assert "| target | wanted | reached | met |" in markdown and "disk tier is off" in markdown
    doc = tmp_path / "SCALING.md"
    doc.write_text(f"# Scaling out\n\n## Routing\n\nkeep me\n\n## {SECTION}\n\nNot measured yet.\n")
    update_section(doc, SECTION, markdown, tiny_result["machine"])
    text = doc.read_text()
    assert "keep me" in text and "Not measured yet" not in text and text.count(f"## {SECTION}") == 1
