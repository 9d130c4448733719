"""Citations users can trust: markers constrained to the passages given, then checked against them.

During decoding, `CitationConstraint` masks the logits right after an opening `[` so that only the number
of a passage in the prompt followed by `]` can be generated; given the passages' texts (and bound to the
tokenizer by the engine), it also steers the model to cite a passage that supports the sentence it just ended.
After decoding, `check_citations` marks each cited sentence `supported` when its words are found in the cited
passage, and attaches an `inferred` citation to uncited sentences that one passage clearly supports.
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
# a sentence ends after `.`, `!` or `?`, with the markers that follow on its line ("... fair. [1] The ..."), and
# whitespace; or at newlines (a line starting with a marker, list-style, keeps it)
_SENTENCE_END = re.compile(r"(?<=[.!?])((?:[ \t]*\[\d{1,3}\][.,;:!?]?)*)\s+|\n+")
_STOPWORDS = frozenset("""
a an the and or but if of to in on at by for with from as is are was were be been being it its this that these
those there here which who whom what when where why how do does did not no can could should would will shall may
might must you your we our they their he she his her i me my
""".split())
STEER_MARGIN = 4.0  # a steered token's logit: the row's best plus this


class CitationConstraint:
    """Logits processor: after `[`, only `n]` for a passage number `n` in the prompt can follow.

    Works on the tokens' texts, so it is independent of how the tokenizer splits digits and brackets. It holds
    the few tokens a marker is made of (`MarkerVocabulary`), not the tokenizer: it is small to pickle, so it
    crosses to the engine process with its request.

    Steering (with `passages`, their texts by number, once `bind` gave it the tokenizer): when the row's most
    likely next token ends the current sentence (split as `check_citations` splits) — a stop token, a token
    starting with a newline, or one starting with whitespace after `.`, `!` or `?` — and that sentence has no
    marker yet and a passage supports it (`support` >= `supported_at`; ties: the lowest number), the opener ` [`
    (`[` after whitespace) is made the most likely token; inside a marker opened after such a sentence, that
    passage's digits, then `]`, are. A steered token is always one the plain constraint allows. Only each
    passage's content words are kept, and the bound tokenizer stays out of pickles.
    """

    def __init__(self, tokenizer: TextTokenizer, numbers: Iterable[int], passages: Mapping[int, str] | None = None,
                 supported_at: float = 0.5, question: str = "") -> None:
        self.vocabulary = marker_vocabulary(tokenizer)
        self.valid = {str(n) for n in numbers}
        self.passage_words = {n: frozenset(_content_words(text)) for n, text in sorted((passages or {}).items())
                              if str(n) in self.valid}
        self.supported_at = supported_at
        self.given = frozenset(_content_words(question))  # the question's words: premises, not claims to support
        self._bound: _TokenTexts | None = None

    def bind(self, tokenizer: TextTokenizer) -> None:
        """Read token texts from `tokenizer` from now on (steering needs them; without passages, a no-op)."""
        if self.passage_words:
            self._bound = _TokenTexts(tokenizer, self.vocabulary.openers)

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_bound": None}

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
            return logits if self._bound is None else self._steer_open(self._bound, generated, logits)
        allowed = self.allowed(partial)
        if not allowed:
            return logits
        masked = torch.full_like(logits, float("-inf"))
        index = torch.tensor(allowed, device=logits.device)
        masked[index] = logits[index]
        if self._bound is not None:
            self._steer_inside(self._bound, generated, partial, masked)
        return masked

    def _steer_open(self, bound: _TokenTexts, generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        """`logits`, or a copy whose argmax is the opener when the most likely token ends a supported sentence."""
        top = int(logits.argmax())
        after = bound.text(top)
        last = bound.text(generated[-1]) if generated else ""
        if not (top in bound.stops or after.startswith("\n")
                or (after[:1].isspace() and last.endswith((".", "!", "?")))):
            return logits
        text = bound.join(generated)
        opener = bound.openers.get("[" if text[-1:].isspace() else " [")
        if opener is None or self._best(text) is None or not bool(torch.isfinite(logits[opener])):
            return logits
        steered = logits.clone()
        steered[opener] = logits.max() + STEER_MARGIN
        return steered

    def _steer_inside(self, bound: _TokenTexts, generated: list[int], partial: str, masked: torch.Tensor) -> None:
        """Raise, in `masked` (in place), the token that types on toward the number of the passage supporting the
        sentence before the marker's opener: its next digits, or `]` once typed."""
        opener_at = len(generated) - 1
        while generated[opener_at] not in self.vocabulary.openers:
            opener_at -= 1
        best = self._best(bound.join(generated[:opener_at]))
        if best is None:
            return
        number, digits = str(best), self.vocabulary.digits
        if partial == number:
            toward = next((tid for tid, text in self.vocabulary.closers.items() if text == "]"), None)
        else:  # the longest digits token that types on toward the number
            toward = max((tid for tid, text in digits.items() if number.startswith(partial + text)),
                         key=lambda tid: len(digits[tid]), default=None)
        if toward is not None:
            masked[toward] = masked.max() + STEER_MARGIN

    def _best(self, text: str) -> int | None:
        """The passage that supports the last sentence of `text` (the lowest number of the best), if that sentence
        has no marker, has content words, and the support reaches `supported_at`."""
        sentence = (sentences(text) or [""])[-1]
        words = _content_words(sentence) - self.given
        if not words or _MARKER.search(sentence):
            return None
        scores = {n: len(words & passage) / len(words) for n, passage in self.passage_words.items()}
        best = max(scores, key=scores.__getitem__)  # the first, lowest, of equals: passage_words is sorted
        return best if scores[best] >= self.supported_at else None


class _TokenTexts:
    """What a bound constraint reads from its tokenizer: each token's text (decoded on first use), the stop
    tokens, and the bare openers ` [` and `[` by their text."""

    def __init__(self, tokenizer: TextTokenizer, openers: Iterable[int]) -> None:
        self.tokenizer = tokenizer
        self.texts: dict[int, str] = {}
        self.stops = tokenizer.stop_token_ids
        self.openers = {text: tid for tid in openers if (text := self.text(tid)) in (" [", "[")}

    def text(self, tid: int) -> str:
        text = self.texts.get(tid)
        if text is None:
            text = self.texts[tid] = self.tokenizer.decode([tid], skip_special_tokens=False)
        return text

    def join(self, ids: list[int]) -> str:
        return "".join(self.text(tid) for tid in ids)


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


def support(sentence: str, passage: str, given: frozenset[str] = frozenset()) -> float:
    """Share of the sentence's content words that occur in the passage (0..1), leaving out the `given` words (the
    question's: "Which module provides cmp()?" answered "The module that provides cmp() is filecmp." claims
    only "filecmp"); 0 when nothing is left."""
    words = _content_words(_MARKER.sub(" ", sentence)) - given
    if not words:
        return 0.0
    return len(words & _content_words(passage)) / len(words)


def sentences(answer: str) -> list[str]:
    """The answer's sentences, trimmed: split after `.`, `!` or `?` (and the markers that follow on the line)
    and whitespace, or at newlines; a segment with no words besides its markers (e.g. the `[2]` that ends
    `"... is os.path. [2]"`) ends the sentence before it (the answer's text from that sentence's start to the
    segment's end)."""
    cuts = [(m.start() + len(m.group(1) or ""), m.end()) for m in _SENTENCE_END.finditer(answer)]
    spans: list[tuple[int, int]] = []
    for start, end in zip([0] + [b for _, b in cuts], [a for a, _ in cuts] + [len(answer)], strict=True):
        segment = answer[start:end]
        if spans and _MARKER.search(segment) and not _WORD.search(_MARKER.sub(" ", segment)):
            spans[-1] = (spans[-1][0], end)
        elif segment.strip():
            spans.append((start, end))
    return [answer[a:b].strip() for a, b in spans]


def check_citations(answer: str, passages: Mapping[int, Chunk], supported_at: float = 0.5,
                    infer_at: float = 0.75, question: str = "") -> list[Citation]:
    """Citations of `answer`, one per (sentence, passage) pair; `passages` by number (markers naming no
    passage are dropped). A cited sentence is supported when `support` (the `question`'s words left out)
    reaches `supported_at`; an uncited one is inferred from a passage whose support reaches `infer_at`."""
    given = frozenset(_content_words(question))
    out: list[Citation] = []
    for sentence in sentences(answer):
        numbers = [int(m) for m in _MARKER.findall(sentence) if int(m) in passages]
        for n in dict.fromkeys(numbers):
            score = support(sentence, passages[n].text, given)
            out.append(Citation(n, passages[n], sentence, "cited", score >= supported_at, score))
        if numbers or len(_content_words(sentence)) < 4:
            continue
        scores = {n: support(sentence, p.text, given) for n, p in passages.items()}
        best = max(scores, key=lambda n: (scores[n], -n), default=None)
        if best is not None and scores[best] >= infer_at:
            out.append(Citation(best, passages[best], sentence, "inferred", True, scores[best]))
    return out
