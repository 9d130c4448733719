"""A follow-up with a pronoun finds the page its conversation is about, and a turn that changes the subject finds
its own: recall@5 over the python3.11-doc pages of the 20 smallest answering pages of the held-out follow-up set
(`appliance/bench/data/pydoc_followups.json`, written by hand, not tuned on), searched as asked and as the
pipeline searches (the shipped rewriter's query, and the question as asked, fused). The full-corpus figures
come from `appliance bench followups` (docs/BENCHMARKS.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from appliance.bench.followups import load_pairs
from appliance.bench.retrieval import CORPUS
from appliance.rag.rewrite import FollowUpRewriter, PriorTurn, phrasings
from retrieval.service import RetrievalService

PAIRS = 20
# a second question on another subject (its page among the 20), after a first one from the set
SWITCHES = [("What does json.dumps do?", "How do I make a deep copy of a nested list?", "copy.html"),
            ("How do I create a temporary file?", "How do I generate a secure random token for a URL?", "secrets.html"),
            ("Which module gives a heap queue?", "How do I wrap a long paragraph to 70 columns?", "textwrap.html"),
            ("How do I copy a directory tree?", "How do I insert into a sorted list keeping it sorted?", "bisect.html"),
            ("What is a dataclass?", "How do I pack integers into bytes in little-endian order?", "struct.html"),
            ("How do I read a CSV file?", "How do I compute the median of a list of numbers?", "statistics.html")]


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


def _found(service: RetrievalService, searches: list[list[str]], pages: list[str]) -> float:
    """Share of `searches` (each: the phrasings searched together) whose top 5 holds a chunk of its page."""
    found = [any(Path(hit.chunk.source).name == page for hit in service.search_phrasings(queries, ["pydoc"], 5))
             for queries, page in zip(searches, pages, strict=True)]
    return sum(found) / len(found)


def _searched(turns: list[tuple[str, str]]) -> list[list[str]]:
    """What the pipeline searches for each (first question, second question)."""
    rewriter = FollowUpRewriter(NoEngine())  # type: ignore[arg-type]
    rewrites = [asyncio.run(rewriter.rewrite([PriorTurn(first, "")], second)) for first, second in turns]
    assert {r.method for r in rewrites} == {"fallback"}
    return [phrasings(r, second) for r, (_, second) in zip(rewrites, turns, strict=True)]


def test_follow_ups_find_their_page_and_new_subjects_their_own(followups) -> None:
    service, pairs = followups
    assert len(pairs) == PAIRS and len({p.page for p in pairs}) >= 15
    pages = [p.page for p in pairs]
    assert _found(service, [[p.turn1] for p in pairs], pages) >= 0.9  # the first questions find their pages
    as_asked = _found(service, [[p.turn2] for p in pairs], pages)
    searched = _found(service, _searched([(p.turn1, p.turn2) for p in pairs]), pages)
    assert searched >= 0.9 and searched >= as_asked + 0.2, (as_asked, searched)
    assert {page for _, _, page in SWITCHES} <= set(pages)
    switched = _searched([(first, second) for first, second, _ in SWITCHES])
    assert _found(service, switched, [page for _, _, page in SWITCHES]) == 1.0
    # the earlier question alone (the fallback's query without the question as asked) loses some of them
    assert _found(service, [queries[:1] for queries in switched], [page for _, _, page in SWITCHES]) < 1.0
