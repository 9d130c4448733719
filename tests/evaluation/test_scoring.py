"""The golden-set scores and the baseline gate, on hand-made answers and runs (no model)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from appliance.evaluation.scoring import (
    Metrics,
    QuestionResult,
    answer_right,
    compare,
    metrics_from_json,
    metrics_json,
    normalise,
    recall_at_k,
    summarise,
    token_f1,
)


def row(recall: float | None = None, right: bool | None = None, cited: int = 0, supported: int = 0,
        ttft_ms: float = 100.0) -> QuestionResult:
    return QuestionResult(1, "q?", [1], ["a.html"], recall, None, "answer", right, cited, supported, ttft_ms)


BASE = Metrics(questions=4, recall=0.8, recall_questions=4, accuracy=0.5, accuracy_questions=2,
               citation_validity=0.9, cited_markers=10, cited_answers=0.75, ttft_p50_ms=200.0)


def test_normalise_drops_case_markers_marks_and_the_final_stop() -> None:
    assert normalise("  The `colorsys`   module [2] is **it**. ") == "the colorsys module is it"


@pytest.mark.parametrize(("answer", "expected", "right"), [
    ("The `colorsys` module converts colours [1].", "colorsys", True),
    ("COLORSYS does it.", "Colorsys.", True),  # case and a final stop do not matter
    ("It was added in Python 3.12.", "3.2", False),  # a version inside another
    ("Use os.path.join.", "os", False),  # a module name inside a dotted name
    ("\n\nUse os for that.\nos.path too", "os", True),  # the first non-empty line
    ("Maybe.\nThe colorsys module.", "colorsys", False),  # only the first line counts
    ("keyword.iskeyword(s) tells.", "keyword.iskeyword", True),
])
def test_short_answers_must_appear_in_the_first_line(answer: str, expected: str, right: bool) -> None:
    assert answer_right(answer, expected) is right


def test_long_answers_are_right_from_a_token_f1_of_one_half() -> None:
    expected = "The colorsys module converts colors between RGB and the HLS, HSV and YIQ coordinate systems."
    close = "It converts colors between RGB and the HLS, HSV and YIQ systems [1]."
    assert token_f1(close, expected) >= 0.5 and answer_right(close, expected)
    far = "Use the tty module to put a terminal in raw mode; it converts nothing at all."
    assert token_f1(far, expected) < 0.5 and not answer_right(far, expected)
    # not containment: the right words on a later line count, the same words as a short answer would not
    assert answer_right("Sure.\n" + close, expected)


def test_token_f1() -> None:
    assert token_f1("x y z", "y z w") == pytest.approx(2 / 3)
    assert token_f1("The x [3].", "x") == 1.0  # articles, markers and punctuation are not tokens
    assert token_f1("", "x") == 0.0 and token_f1("x", "y") == 0.0


def test_recall_prefers_chunk_ids_then_pages() -> None:
    assert recall_at_k([3, 4], ["a.html"], [1, 3, 5], ["a.html", "b.html"]) == 0.5
    assert recall_at_k([3], [], [3], []) == 1.0
    assert recall_at_k([], ["a.html", "c.html"], [1], ["a.html", "a.html"]) == 0.5
    assert recall_at_k([], ["c.html"], [1], ["a.html"]) == 0.0
    assert recall_at_k([], [], [1], ["a.html"]) is None


def test_summarise() -> None:
    rows = [row(recall=1.0, right=True, cited=2, supported=2, ttft_ms=100),
            row(recall=0.5, right=False, cited=2, supported=1, ttft_ms=300),
            row(recall=None, right=None, cited=0, ttft_ms=200)]
    m = summarise(rows)
    assert (m.questions, m.recall, m.recall_questions, m.accuracy, m.accuracy_questions) == (3, 0.75, 2, 0.5, 2)
    assert (m.citation_validity, m.cited_markers, m.cited_answers, m.ttft_p50_ms) == (0.75, 4, 2 / 3, 200)
    none = summarise([row()])
    assert none.recall is None and none.accuracy is None and none.citation_validity is None
    with pytest.raises(ValueError):
        summarise([])


def test_compare_within_the_tolerances_passes() -> None:
    near = replace(BASE, recall=0.76, accuracy=0.46, citation_validity=0.85, ttft_p50_ms=299.0)
    assert compare(BASE, near, tolerance=0.05, ttft_tolerance=0.5) == []
    better = replace(BASE, recall=1.0, ttft_p50_ms=50.0)
    assert compare(BASE, better, 0.05, 0.5) == []


@pytest.mark.parametrize("metric", ["recall", "accuracy", "citation_validity"])
def test_a_drop_past_the_tolerance_regresses(metric: str) -> None:
    worse = replace(BASE, **{metric: getattr(BASE, metric) - 0.06})
    (regression,) = compare(BASE, worse, 0.05, 0.5)
    assert regression.metric == metric
    assert f"{getattr(BASE, metric):.3f} -> {getattr(worse, metric):.3f}" in regression.describe()
    assert compare(BASE, worse, 0.1, 0.5) == []


def test_ttft_growth_is_relative() -> None:
    (regression,) = compare(BASE, replace(BASE, ttft_p50_ms=301.0), 0.05, 0.5)
    assert regression.metric == "ttft_p50_ms" and "200 ms -> 301 ms" in regression.describe()
    assert compare(BASE, replace(BASE, ttft_p50_ms=301.0), 0.05, 1.0) == []


def test_a_metric_no_longer_measured_regresses_and_one_never_measured_is_skipped() -> None:
    (regression,) = compare(BASE, replace(BASE, citation_validity=None), 0.05, 0.5)
    assert regression.metric == "citation_validity" and "n/a" in regression.describe()
    assert compare(replace(BASE, accuracy=None), replace(BASE, accuracy=0.0), 0.05, 0.5) == []


def test_several_regressions_are_all_named() -> None:
    worse = replace(BASE, recall=0.1, accuracy=0.0, ttft_p50_ms=1000.0)
    assert [r.metric for r in compare(BASE, worse, 0.05, 0.5)] == ["recall", "accuracy", "ttft_p50_ms"]


def test_metrics_round_trip_through_json() -> None:
    assert metrics_from_json(metrics_json(BASE)) == BASE
    assert metrics_from_json(metrics_json(replace(BASE, recall=None))).recall is None
    for bad in (None, [], {**metrics_json(BASE), "ttft_p50_ms": None}, {**metrics_json(BASE), "recall": "1"},
                {k: v for k, v in metrics_json(BASE).items() if k != "questions"}):
        with pytest.raises(ValueError):
            metrics_from_json(bad)
