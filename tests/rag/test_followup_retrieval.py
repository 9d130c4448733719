"""A follow-up with a pronoun finds the page its conversation is about: recall@5 of the held-out follow-up set
(`appliance/bench/data/pydoc_followups.json`, written by hand, not tuned on) over the python3.11-doc pages of
its 20 smallest answering pages, searched as asked and as the shipped rewriter makes it. The full-corpus figures
come from `appliance bench followups` (docs/BENCHMARKS.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from appliance.bench.followups import load_pairs
from appliance.bench.retrieval import CORPUS
from appliance.rag.rewrite import FollowUpRewriter, PriorTurn
from retrieval.service import RetrievalService

PAIRS = 20


class NoEngine:
    """The shipped default policy searches without the engine: any use of it fails the test."""

    @property
    def tokenizer(self):  # noqa: ANN201
        raise AssertionError("the default follow-up policy must not call the engine")


@pytest.fixture(scope="module")
def followups(tmp_path_factory: pytest.TempPathFactory, loaded_model):
    if not CORPUS.is_dir():
        pytest.fail(f"needs Debian's python3.11-doc at {CORPUS} (make test-system-deps)")
    pairs = sorted(load_pairs(), key=lambda p: (CORPUS / p.page).stat().st_size)[:PAIRS]
    service = RetrievalService.open(tmp_path_factory.mktemp("followups"), loaded_model.tokenizer)
    assert service.ingest_paths("pydoc", sorted({CORPUS / p.page for p in pairs})).state == "done"
    yield service, pairs
    service.close()


def _recall(service: RetrievalService, queries: list[str], pages: list[str]) -> float:
    found = [any(Path(hit.chunk.source).name == page for hit in service.search(query, ["pydoc"], 5, "hybrid"))
             for query, page in zip(queries, pages, strict=True)]
    return sum(found) / len(found)


def test_rewritten_follow_ups_find_their_page(followups) -> None:
    service, pairs = followups
    assert len(pairs) == PAIRS and len({p.page for p in pairs}) >= 15
    rewriter = FollowUpRewriter(NoEngine())  # type: ignore[arg-type]
    rewrites = [asyncio.run(rewriter.rewrite([PriorTurn(p.turn1, "")], p.turn2)) for p in pairs]
    assert {r.method for r in rewrites} == {"fallback"}
    pages = [p.page for p in pairs]
    as_asked = _recall(service, [p.turn2 for p in pairs], pages)
    rewritten = _recall(service, [r.query for r in rewrites], pages)
    assert _recall(service, [p.turn1 for p in pairs], pages) >= 0.9  # the first questions find their pages
    assert rewritten >= 0.9 and rewritten >= as_asked + 0.2, (as_asked, rewritten)
