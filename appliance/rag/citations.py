"""Citations users can trust: markers constrained to the passages given, then checked against them.

During decoding, `CitationConstraint` masks the logits right after an opening `[` so that only the number
of a passage in the prompt followed by `]` can be generated. After decoding,
`check_citations` marks each cited sentence `supported` when its words are found in the cited passage,
and attaches an `inferred` citation to uncited sentences that one passage clearly supports.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from appliance.engine.tokenizer import TextTokenizer
from retrieval.types import Chunk

_MARKER = re.compile(r"\[(\d{1,3})\]")
_WORD = re.compile(r"[A-Za-z0-9_]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_STOPWORDS = frozenset("""
a an the and or but if of to in on at by for with from as is are was were be been being it its this that these
those there here which who whom what when where why how do does did not no can could should would will shall may
might must you your we our they their he she his her i me my
""".split())


class CitationConstraint:
    """Logits processor: after `[`, only `n]` for a passage number `n` in the prompt can follow.

    Works on the tokens' texts, so it is independent of how the tokenizer splits digits and brackets. It holds
    the few tokens a marker is made of (`MarkerVocabulary`), not the tokenizer: it is small to pickle, so it
    crosses to the engine process with its request.
    """

    def __init__(self, tokenizer: TextTokenizer, numbers: Iterable[int]) -> None:
        self.vocabulary = marker_vocabulary(tokenizer)
        self.valid = {str(n) for n in numbers}

    def open_marker(self, generated: list[int]) -> str | None:
        """The digits typed so far after an unclosed `[` within the last 8 generated tokens, else None."""
        inside = ""
        for tid in reversed(generated[-8:]):
            opened = self.vocabulary.openers.get(tid)
            if opened is not None:
                typed = opened + inside
                return typed if typed.isdigit() or typed == "" else None
            digits = self.vocabulary.digits.get(tid)
            if digits is None:
                return None
            inside = digits + inside
        return None

    def allowed(self, partial: str) -> list[int]:
        allowed = [tid for tid, text in self.vocabulary.digits.items()
                   if len(text) <= 4 and any(v.startswith(partial + text) for v in self.valid)]
        if partial in self.valid:
            allowed.extend(self.vocabulary.closers)
        return allowed

    def __call__(self, generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        """logits: [V] for the next token of a request whose output so far is `generated`."""
        partial = self.open_marker(generated)
        if partial is None:
            return logits
        allowed = self.allowed(partial)
        if not allowed:
            return logits
        masked = torch.full_like(logits, float("-inf"))
        index = torch.tensor(allowed, device=logits.device)
        masked[index] = logits[index]
        return masked


@dataclass(frozen=True)
class Citation:
    n: int
    chunk: Chunk
    sentence: str
    kind: str  # "cited" | "inferred"
    supported: bool
    overlap: float


@dataclass(frozen=True)
class MarkerVocabulary:
    """The tokens a citation marker is made of, with their texts: `openers` hold `[` (the text after their last
    `[`), `digits` are digits only, `closers` start with `]` ("]", "].", "],", ...; at most 4 characters)."""

    openers: dict[int, str]
    digits: dict[int, str]
    closers: dict[int, str]


@functools.cache
def marker_vocabulary(tokenizer: TextTokenizer) -> MarkerVocabulary:
    """Scan the vocabulary once per tokenizer for the tokens of `MarkerVocabulary`."""
    openers, digits, closers = {}, {}, {}
    for tid in range(tokenizer.vocab_size):
        text = tokenizer.decode([tid], skip_special_tokens=False)
        if "[" in text:
            openers[tid] = text[text.rindex("[") + 1:]
        elif text.isdigit():
            digits[tid] = text
        elif text.startswith("]") and len(text) <= 4:
            closers[tid] = text
    return MarkerVocabulary(openers, digits, closers)


def _content_words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text) if w.lower() not in _STOPWORDS and len(w) > 1}


def support(sentence: str, passage: str) -> float:
    """Share of the sentence's content words that occur in the passage (0..1)."""
    words = _content_words(_MARKER.sub(" ", sentence))
    if not words:
        return 0.0
    return len(words & _content_words(passage)) / len(words)


def check_citations(answer: str, passages: Mapping[int, Chunk], supported_at: float = 0.5,
                    infer_at: float = 0.75) -> list[Citation]:
    """Citations of `answer`, one per (sentence, passage) pair; `passages` by number (markers naming no
    passage are dropped)."""
    out: list[Citation] = []
    for sentence in (s.strip() for s in _SENTENCE_END.split(answer)):
        if not sentence:
            continue
        numbers = [int(m) for m in _MARKER.findall(sentence) if int(m) in passages]
        for n in dict.fromkeys(numbers):
            score = support(sentence, passages[n].text)
            out.append(Citation(n, passages[n], sentence, "cited", score >= supported_at, score))
        if numbers or len(_content_words(sentence)) < 4:
            continue
        scores = {n: support(sentence, p.text) for n, p in passages.items()}
        best = max(scores, key=lambda n: (scores[n], -n), default=None)
        if best is not None and scores[best] >= infer_at:
            out.append(Citation(best, passages[best], sentence, "inferred", True, scores[best]))
    return out
