"""Evidence: the passage sentences that best back an answer, quoted verbatim, so that a reader sees the source
even when a small model's wording is weak.

Each passage's text is split into sentences with their character offsets (a sentence ends after `.`, `!` or
`?` followed by whitespace, and at a newline, as `citations.py` splits an answer); a sentence longer than
`MAX_QUOTE` characters (a block of table rows, a page extracted without punctuation) is cut into pieces on
word boundaries. When the question names something (`focus_term`: an identifier such as `clear_cache()`,
`IPv6Address`, a word the passages write as code such as `dircmp`, or a capitalised name) that the passages
mention, only the sentences mentioning it are candidates: the quote is about what was asked, even when the answer
is wrong. A sentence that writes that name qualified (`filecmp.dircmp(a, b)`: its definition, which also says
where it lives) comes before the others. A candidate scores by the content words (`citations.py`'s notion:
identifiers such as `xml.parsers.expat.ErrorString` count word by word) it shares with the answer, weighted most,
and with the question, plus a preference for the passages the answer cites with support, then for inferred
ones, divided by the square root of its own content words (a short sentence that says it beats a long one that
mentions it). Measured by `appliance bench answers` (the evidence column).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass

from appliance.rag.citations import _MARKER, Citation, _content_words
from retrieval.types import Chunk

MAX_QUOTE = 300  # characters of one quote at most
ANSWER_WEIGHT = 2.0  # per content word a sentence shares with the answer
QUESTION_WEIGHT = 1.0  # per content word it shares with the question
CITED_BONUS = 1.0  # its passage is cited with support by the answer
INFERRED_BONUS = 0.5  # its passage is matched to an answer sentence by the citation check
_BOUNDARY = re.compile(r"(?<=[.!?])\s+|\n+")
_NAME = re.compile(r"[A-Za-z0-9_]+")
_CODE_SPAN = re.compile(r"`([^`\n]+)`")  # `name` in a page converted to markdown
_QUALIFIED_NAME = re.compile(r"(?<=[A-Za-z0-9_])\.([A-Za-z_][A-Za-z0-9_]*)")  # each name after a `.`


@dataclass(frozen=True)
class Evidence:
    n: int  # the passage's number in the prompt
    chunk: Chunk
    start: int  # the quote is chunk.text[start:end], exactly
    end: int
    score: float
    defines: bool = False  # the quote writes the question's focus qualified (`module.name`): ranked first

    @property
    def quote(self) -> str:
        return self.chunk.text[self.start:self.end]


def evidence_for(answer: str, question: str, passages: Mapping[int, Chunk], citations: Sequence[Citation],
                 limit: int = 1) -> list[Evidence]:
    """The `limit` passage sentences (different texts) that best back `answer` to `question`, best first.

    `passages` by number as the prompt showed them; `citations`: `check_citations` of the answer. Empty only
    when no sentence of any passage shares a content word with the answer or the question. Deterministic: ties
    go to the lower passage number, then the earlier sentence.
    """
    answer_words = _content_words(_MARKER.sub(" ", answer))
    question_words = _content_words(question)
    bonus = _bonuses(citations)
    sentences = [(n, start, end, _content_words(passages[n].text[start:end]))
                 for n in sorted(passages) for start, end in sentence_spans(passages[n].text)]
    focus = focus_term(question, [words for *_, words in sentences],
                       code_words(passages[n].text for n in sorted(passages)))
    scored: list[Evidence] = []
    for n, start, end, words in sentences:
        if focus is not None and focus not in words:
            continue
        shared_answer, shared_question = len(words & answer_words), len(words & question_words)
        if shared_answer or shared_question:
            score = ANSWER_WEIGHT * shared_answer + QUESTION_WEIGHT * shared_question + bonus.get(n, 0.0)
            defines = focus is not None and focus in _qualified_names(passages[n].text[start:end])
            scored.append(Evidence(n, passages[n], start, end, score / math.sqrt(len(words)), defines))
    best: dict[str, Evidence] = {}
    for e in sorted(scored, key=lambda e: (not e.defines, -e.score, e.n, e.start)):
        if len(best) >= limit:
            break
        best.setdefault(e.quote, e)
    return list(best.values())


def focus_term(question: str, sentences: Sequence[set[str]], code: Set[str] = frozenset()) -> str | None:
    """What the question names, as a content word, among those some of `sentences` (content-word sets) mention:
    an identifier (with `_`, a digit, a capital after its first letter, or called: `name(`), then a word the
    passages write as code (`code`, lower case: `code_words`), then a word that is only capitalised (not the
    question's first: "Python" in "Which Python module ..."), each rank the one fewest sentences mention; None
    when there is none."""
    rank: dict[str, int] = {}
    for i, m in enumerate(_NAME.finditer(question)):
        word, lower = m.group(0), m.group(0).lower()
        if ("_" in word or any(c.isdigit() for c in word) or any(c.isupper() for c in word[1:])
                or question[m.end():m.end() + 1] == "("):
            rank[lower] = 0
        elif lower in code:
            rank[lower] = min(rank.get(lower, 1), 1)
        elif i > 0 and word[0].isupper():
            rank[lower] = min(rank.get(lower, 2), 2)
    counts = {w: sum(w in s for s in sentences) for w in rank.keys() & _content_words(question)}
    present = [w for w, count in counts.items() if count]
    return min(present, key=lambda w: (rank[w], counts[w], w)) if present else None


def code_words(texts: Iterable[str]) -> set[str]:
    """The names `texts` write as code, lower case: inside backticks, or qualified (the `dircmp` of
    `filecmp.dircmp`)."""
    words: set[str] = set()
    for text in texts:
        for span in _CODE_SPAN.findall(text):
            words.update(w.lower() for w in _NAME.findall(span))
        words |= _qualified_names(text)
    return words


def _qualified_names(text: str) -> set[str]:
    """The names `text` writes after a qualifier (`module.name`, `Class.method`), lower case."""
    return {name.lower() for name in _QUALIFIED_NAME.findall(text)}


def sentence_spans(text: str) -> Iterator[tuple[int, int]]:
    """[start, end) of each sentence of `text` that has a content word: trimmed of whitespace, at most
    `MAX_QUOTE` characters (a longer one is cut after a word where it can be)."""
    start = 0
    for boundary in [*_BOUNDARY.finditer(text), None]:
        end = boundary.start() if boundary else len(text)
        for piece_start, piece_end in _pieces(text, start, end):
            if _content_words(text[piece_start:piece_end]):
                yield piece_start, piece_end
        start = boundary.end() if boundary else len(text)


def _pieces(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    """text[start:end] trimmed, in pieces of at most MAX_QUOTE characters, each trimmed."""
    start, end = _trim(text, start, end)
    while end - start > MAX_QUOTE:
        # after the last whitespace that leaves at most MAX_QUOTE characters before it, else a hard cut
        cut = next((i for i in range(start + MAX_QUOTE, start, -1) if text[i].isspace()), start + MAX_QUOTE)
        yield _trim(text, start, cut)
        start, end = _trim(text, cut, end)
    if start < end:
        yield start, end


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    """[start, end) without the whitespace at either end (empty at `end` when it is all whitespace)."""
    piece = text[start:end]
    if not piece.strip():
        return end, end
    return start + len(piece) - len(piece.lstrip()), end - (len(piece) - len(piece.rstrip()))


def _bonuses(citations: Sequence[Citation]) -> dict[int, float]:
    """Passage number -> its preference: cited with support, else inferred (the best it gets)."""
    bonus: dict[int, float] = {}
    for c in citations:
        if c.kind == "cited" and c.supported:
            bonus[c.n] = max(bonus.get(c.n, 0.0), CITED_BONUS)
        elif c.kind == "inferred":
            bonus[c.n] = max(bonus.get(c.n, 0.0), INFERRED_BONUS)
    return bonus


def evidence_json(evidence: Sequence[Evidence]) -> list[dict]:
    """The evidence as the answer's JSON carries it: [{n, chunk_id, doc_id, title, page, quote, start, end}]."""
    return [{"n": e.n, "chunk_id": e.chunk.chunk_id, "doc_id": e.chunk.doc_id, "title": e.chunk.title,
             "page": e.chunk.page, "quote": e.quote, "start": e.start, "end": e.end} for e in evidence]
