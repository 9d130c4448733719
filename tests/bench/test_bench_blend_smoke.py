"""A tiny run of `appliance bench blend`: three markdown pages, two questions with gold answers, a few variants.

Nothing here is timed; what is checked is that the fidelity measures can tell: in float32 (where the engine
is exact), `exact` and a 100% recompute (chosen by deviation, at random or by the question's attention) must
give off's answers, verdicts and distributions, plain reuse must not.
"""

from __future__ import annotations

import pytest

from appliance.bench.blend import Variant, blend_markdown, plot_frontier, run_blend_bench
from appliance.config import BLEND_SELECT_LAYERS
from tests.bench.test_bench_rag_smoke import PAGES, QUESTIONS

GOLDS = ["iron", "storm", "1969"]
FULL = ("exact", "blend@1.0", "random@1.0", "query@1.0", "mixed@1.0", "blend@1.0+int8")


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory: pytest.TempPathFactory, loaded_model) -> dict:
    corpus = tmp_path_factory.mktemp("corpus")
    for name, text in PAGES.items():
        (corpus / name).write_text(text)
    variants = [Variant.parse(spec) for spec in ("reuse", "reuse+int8", *FULL, "blend@0.5/3", "query@0.5:3")]
    questions = ([q.text for q in QUESTIONS], [q.page for q in QUESTIONS], list(GOLDS))
    return run_blend_bench(tmp_path_factory.mktemp("data"), 2, variants, max_tokens=4, k=2, dtype="float32",
                           corpus_dir=corpus, questions=questions, loaded=loaded_model, dense=True)


def test_full_recompute_matches_off_and_reuse_does_not(tiny_result: dict) -> None:
    rows = tiny_result["variants"]
    assert set(rows) == {"off", "reuse", "reuse+int8", *FULL, "blend@0.5/3", "query@0.5:3"}
    for name in FULL:
        assert rows[name]["forced_top1"] == 1.0 and rows[name]["token_f1"] == 1.0, name
        assert rows[name]["forced_kl"] < 1e-6 and rows[name]["same_verdict"] == 1.0, name
    assert rows["reuse"]["recomputed"] == 0 and rows["reuse"]["forced_kl"] > 1e-6
    # the int8 tier is really read: its reuse is off by a different amount than the model-dtype tier's
    assert rows["reuse+int8"]["recomputed"] == 0 and abs(rows["reuse+int8"]["forced_kl"]
                                                         - rows["reuse"]["forced_kl"]) > 1e-6
    for name in ("blend@0.5/3", "query@0.5:3"):
        assert 0 < rows[name]["recomputed"] < rows["blend@1.0"]["recomputed"]
    assert all(r["ttft_ms"] > 0 and 0 <= r["accuracy"] <= 1 for r in rows.values())


def test_markdown_rows_and_frontier_plot(tiny_result: dict, tmp_path) -> None:
    text = blend_markdown(tiny_result)
    for name in tiny_result["variants"]:
        assert f"| {name} |" in text
    assert "/ off [95% CI]" in text
    graded = {**tiny_result, "variants": {name: {**r, "ratio": 1.0, "ratio_low": 0.9, "ratio_high": 1.0}
                                          for name, r in tiny_result["variants"].items()}}
    assert plot_frontier(graded, tmp_path / "frontier.png") and (tmp_path / "frontier.png").stat().st_size > 1000


@pytest.mark.parametrize("spec, expected", [
    ("reuse", Variant("reuse", "reuse")),
    ("blend@0.15", Variant("blend@0.15", "blend", 0.15, BLEND_SELECT_LAYERS)),
    ("blend@0.3/4", Variant("blend@0.3/4", "blend", 0.3, 4)),
    ("random@0.2", Variant("random@0.2", "blend", 0.2, BLEND_SELECT_LAYERS, random=True)),
    ("random@0.2/2", Variant("random@0.2/2", "blend", 0.2, 2, random=True)),
    ("blend@0.15/4/1", Variant("blend@0.15/4/1", "blend", 0.15, 4, candidates=1.0)),
    ("exact", Variant("exact", "exact")),
    ("query@0.15", Variant("query@0.15", "blend", 0.15, select="query")),
    ("mixed@0.2:12", Variant("mixed@0.2:12", "blend", 0.2, select="mixed", query_layer=12)),
    ("reuse+int8", Variant("reuse+int8", "reuse", kv_format="int8")),
    ("query@0.15:4+int8", Variant("query@0.15:4+int8", "blend", 0.15, select="query", query_layer=4,
                                  kv_format="int8")),
])
def test_variant_specs(spec: str, expected: Variant) -> None:
    assert Variant.parse(spec) == expected


@pytest.mark.parametrize("spec", ["exact@0.1", "blend", "blend@x", "blend@1.5", "blend@0.2/1", "random@0.2/y",
                                  "blend@0.1/4/2", "blend@0.1:8", "query@0.1:x", "query@0.1:-1",
                                  "reuse+int4", "reuse+", "blend+int8"])
def test_unknown_variant_is_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="unknown variant"):
        Variant.parse(spec)
