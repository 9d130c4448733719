"""Scoring a golden-set run (pure functions, no engine) and comparing it with a baseline run.

Rules, per question:
- recall@k: the share of the line's `expected_chunk_ids` among the k retrieved chunks; when it has none, the
  share of its `expected_pages` among the retrieved chunks' source file names; None when it has neither.
- right answer (lines with an `expected_answer`): a short expected answer (at most LONG_ANSWER_WORDS words)
  must appear, normalised, in the normalised first non-empty line of the answer as a word of its own
  (`gold_answer.is_right`: "3.2" is not in "3.12", "os" is not in "os.path"); a long one (an
  earlier up-voted answer, say) must reach a token F1 of at least F1_RIGHT against the whole answer.
  Normalised: lower case, citation markers, Markdown marks and a trailing full stop removed, whitespace
  collapsed; F1's tokens are also stripped of punctuation and the articles a/an/the.
- citations: the markers the pipeline's `CitationsEvent` lists as "cited", and how many it marks supported.

Over the set: recall and accuracy are means over the questions that have them (None when none does);
citation validity is supported / cited markers over all answers (None when no answer cites); cited answers
is the share of answers with at least one marker; TTFT p50 is the median time to first token in ms.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from appliance.evaluation.gold_answer import first_line, is_right

LONG_ANSWER_WORDS = 8
F1_RIGHT = 0.5
GATED = ("recall", "accuracy", "citation_validity")  # compared with an absolute tolerance; TTFT relatively

_MARKER = re.compile(r"\[\d{1,3}\]")
_MARKS = re.compile(r"[*`_]+")
_PUNCTUATION = re.compile(r"[^\w\s]")
_ARTICLES = frozenset({"a", "an", "the"})


@dataclass(frozen=True)
class QuestionResult:
    """One golden question as run: what was retrieved and answered, and its scores."""

    line: int
    question: str
    retrieved_chunk_ids: list[int]
    retrieved_pages: list[str]
    recall: float | None
    expected_answer: str | None
    answer: str
    right: bool | None
    cited: int  # citation markers in the answer ("cited" citations)
    supported: int  # of those, the ones the cited passage supports
    ttft_ms: float


@dataclass(frozen=True)
class Metrics:
    """The set's figures (the module doc says how each is computed)."""

    questions: int
    recall: float | None
    recall_questions: int
    accuracy: float | None
    accuracy_questions: int
    citation_validity: float | None
    cited_markers: int
    cited_answers: float
    ttft_p50_ms: float


@dataclass(frozen=True)
class Regression:
    """A gated metric that got worse than the tolerance allows (`new` None: no longer measured)."""

    metric: str
    old: float
    new: float | None
    allowed: str  # the tolerance, as said to the user

    def describe(self) -> str:
        if self.new is None:
            return f"{self.metric}: {_fmt(self.metric, self.old)} -> n/a (no longer measured by this run)"
        return f"{self.metric}: {_fmt(self.metric, self.old)} -> {_fmt(self.metric, self.new)} ({self.allowed})"


def normalise(text: str) -> str:
    """Lower case, without citation markers, Markdown marks or a trailing full stop; whitespace collapsed."""
    text = _MARKS.sub("", _MARKER.sub(" ", text)).lower()
    return " ".join(text.split()).rstrip(".").strip()


def _tokens(text: str) -> list[str]:
    return [t for t in _PUNCTUATION.sub(" ", normalise(text)).split() if t not in _ARTICLES]


def token_f1(answer: str, expected: str) -> float:
    """SQuAD-style token F1 between an answer and an expected answer (0..1)."""
    got, want = _tokens(answer), _tokens(expected)
    common = sum((Counter(got) & Counter(want)).values())
    if not got or not want or not common:
        return 0.0
    precision, recall = common / len(got), common / len(want)
    return 2 * precision * recall / (precision + recall)


def is_long(expected: str) -> bool:
    return len(expected.split()) > LONG_ANSWER_WORDS


def answer_right(answer: str, expected: str) -> bool:
    """The rule of the module doc: short answers by containment in the first line, long ones by token F1."""
    if is_long(expected):
        return token_f1(answer, expected) >= F1_RIGHT
    gold = normalise(expected)
    return bool(gold) and is_right(normalise(first_line(answer)), gold)


def recall_at_k(expected_chunk_ids: Sequence[int], expected_pages: Sequence[str],
                retrieved_chunk_ids: Sequence[int], retrieved_pages: Sequence[str]) -> float | None:
    """Share of the expected chunks (else pages) among those retrieved; None when nothing is expected."""
    if expected_chunk_ids:
        return len(set(expected_chunk_ids) & set(retrieved_chunk_ids)) / len(set(expected_chunk_ids))
    if expected_pages:
        return len(set(expected_pages) & set(retrieved_pages)) / len(set(expected_pages))
    return None


def summarise(rows: Sequence[QuestionResult]) -> Metrics:
    """The set's metrics from its questions (at least one)."""
    if not rows:
        raise ValueError("no question to summarise")
    recalls = [r.recall for r in rows if r.recall is not None]
    judged = [r.right for r in rows if r.right is not None]
    cited = sum(r.cited for r in rows)
    return Metrics(
        questions=len(rows),
        recall=statistics.fmean(recalls) if recalls else None,
        recall_questions=len(recalls),
        accuracy=sum(judged) / len(judged) if judged else None,
        accuracy_questions=len(judged),
        citation_validity=sum(r.supported for r in rows) / cited if cited else None,
        cited_markers=cited,
        cited_answers=sum(r.cited > 0 for r in rows) / len(rows),
        ttft_p50_ms=statistics.median(r.ttft_ms for r in rows),
    )


def compare(old: Metrics, new: Metrics, tolerance: float, ttft_tolerance: float) -> list[Regression]:
    """The gated metrics that regressed from `old` to `new`: recall, accuracy or citation validity lower by
    more than `tolerance` (absolute) or no longer measured; TTFT p50 higher by more than `ttft_tolerance`
    (relative: 0.5 allows 50% slower)."""
    out: list[Regression] = []
    for name in GATED:
        before, after = getattr(old, name), getattr(new, name)
        if before is None:
            continue
        if after is None or before - after > tolerance + 1e-9:
            out.append(Regression(name, before, after, f"drop over the tolerance of {tolerance:g}"))
    if new.ttft_p50_ms > old.ttft_p50_ms * (1 + ttft_tolerance) + 1e-9:
        out.append(Regression("ttft_p50_ms", old.ttft_p50_ms, new.ttft_p50_ms,
                              f"over {ttft_tolerance:.0%} slower"))
    return out


def metrics_json(metrics: Metrics) -> dict[str, float | int | None]:
    return asdict(metrics)


def metrics_from_json(data: object) -> Metrics:
    """The metrics of an earlier run's JSON (its "metrics" object). Raises ValueError when they are not."""
    if not isinstance(data, dict):
        raise ValueError("no \"metrics\" object")
    values: dict[str, Any] = {}
    for field in fields(Metrics):
        value = data.get(field.name)
        optional = "None" in str(field.type)
        if value is None and optional:
            values[field.name] = None
        elif isinstance(value, int | float) and not isinstance(value, bool):
            values[field.name] = value
        else:
            raise ValueError(f"metric {field.name!r} is missing or not a number")
    return Metrics(**values)


def _fmt(metric: str, value: float) -> str:
    return f"{value:.0f} ms" if metric.endswith("_ms") else f"{value:.3f}"
