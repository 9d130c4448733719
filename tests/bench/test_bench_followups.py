"""The follow-up set is well-formed, and a tiny run of `appliance bench followups` (two pages, one pair).

Nothing here is compared with the published figures; they come from `appliance bench followups`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from appliance.bench.followups import FOLLOWUPS, corpus_pages, followups_markdown, load_pairs, run_followups_bench
from appliance.bench.retrieval import CORPUS
from appliance.engine.loader import LoadedModel

PAGE = "<html><head><title>{title}</title></head><body><h1>{title}</h1><p>{text}</p></body></html>"


def test_the_set_has_24_varied_pairs_whose_follow_ups_do_not_name_their_subject() -> None:
    data = json.loads(FOLLOWUPS.read_text())
    assert "by hand" in data["note"] and "not tuned" in data["note"]
    pairs = load_pairs()
    assert len(pairs) >= 24 and len(load_pairs(limit=3)) == 3
    assert len({p.page for p in pairs}) >= 20 and len({p.turn2 for p in pairs}) == len(pairs)
    for pair in pairs:
        assert pair.turn1.strip() and pair.turn2.strip() and pair.page.endswith(".html")
        names = re.findall(r"\b[a-z_]\w*\.[A-Za-z_]\w*", pair.turn1)  # json.dumps, collections.deque ...
        subject = names[0] if names else pair.page.removesuffix(".html")
        assert subject.lower() not in pair.turn2.lower(), pair


def test_every_answering_page_is_in_the_corpus() -> None:
    if not CORPUS.is_dir():
        pytest.skip("needs Debian's python3.11-doc")
    pairs = load_pairs()
    assert {p.page for p in pairs} <= {f.name for f in corpus_pages(CORPUS, pairs, sample=0)}
    sampled = corpus_pages(CORPUS, pairs, sample=10)
    assert {p.page for p in pairs} <= {f.name for f in sampled} and len(sampled) <= 10 + len(pairs)


def test_a_set_page_missing_from_the_corpus_is_refused(tmp_path: Path) -> None:
    (tmp_path / "json.html").write_text("x")
    with pytest.raises(FileNotFoundError, match="spam.html"):
        corpus_pages(tmp_path, load_pairs(_pairs_file(tmp_path, "spam.html")), sample=0)


def _pairs_file(folder: Path, page: str) -> Path:
    path = folder / "pairs.json"
    path.write_text(json.dumps({"note": "test", "pairs": [
        {"turn1": "What does spam.fry do?", "turn2": "How long does it take?", "page": page}]}))
    return path


def test_the_bench_runs_on_a_tiny_slice(tmp_path: Path, loaded_model: LoadedModel) -> None:
    corpus = tmp_path / "library"
    corpus.mkdir()
    (corpus / "spam.html").write_text(PAGE.format(
        title="spam.fry", text="spam.fry(eggs) fries the eggs in a pan; pass crispy=True to brown them."))
    (corpus / "toast.html").write_text(PAGE.format(
        title="Toasting", text="How long does it take to toast bread? Toasting bread takes two minutes."))
    result = run_followups_bench(corpus, tmp_path / "data", k=1, max_tokens=4, loaded=loaded_model,
                                 pairs_file=_pairs_file(tmp_path, "spam.html"), say=lambda _: None)
    assert result["pairs"] == 1 and result["corpus"]["documents"] == 2
    (row,) = result["rows"]
    assert row["rank"]["turn 1 (reference)"] == 1 and row["rank"]["as asked"] is None  # the follow-up finds the toast
    assert row["queries"]["fallback"] == "What does spam.fry do? How long does it take?"
    assert row["method"] in ("model", "fallback") and row["default_ms"] > 0
    assert set(result["retrieval"]) == set(row["rank"]) and result["rewrite_ms"]["engine rewrite"]["median"] > 0
    markdown = followups_markdown(result)
    assert "| (a) the follow-up searched as asked | 0.00 | 0/1 | 0.00 | 0.00 |" in markdown
    assert "Expected before the first run" in markdown
