"""Grounded extraction: each value of a JSON answer traced to the passages that contain it.

A RAG request with a JSON schema answers with fields, not sentences. `ground_fields` walks the answer's leaf
values (by JSON pointer, RFC 6901) and looks for each in the numbered passages the prompt showed, the way
`citations.py` checks a cited sentence: a string is found when its normalised text occurs in a passage (or,
for a longer value, when most of its content words do), a number when one of its usual spellings stands
alone in a passage. Each field is `supported` (with the passages and the sentence that holds it),
`not_found` (the model wrote something no passage says), or `unchecked` (true, false, null, empty text).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from appliance.rag.citations import support
from retrieval.types import Chunk

_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n+")
_SPACES = re.compile(r"\s+")
_WORDS_MATCH_AT = 0.75  # share of a long value's content words a passage must hold (citations' infer_at)


@dataclass(frozen=True)
class FieldSource:
    n: int  # the passage's number in the prompt
    chunk: Chunk
    quote: str  # the passage's sentence that holds the value


@dataclass(frozen=True)
class FieldGrounding:
    pointer: str  # JSON pointer of the value in the answer ("/parties/0/name")
    value: Any
    status: str  # "supported" | "not_found" | "unchecked"
    sources: tuple[FieldSource, ...] = ()


def ground_fields(answer: str, passages: Mapping[int, Chunk]) -> list[FieldGrounding] | None:
    """One entry per leaf value of the JSON `answer`, in document order; None when the answer is not JSON
    (e.g. cut off by max_tokens)."""
    try:
        document = json.loads(answer)
    except json.JSONDecodeError:
        return None
    return [_ground(pointer, value, passages) for pointer, value in _leaves(document, "")]


def _leaves(value: Any, pointer: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{pointer}/{str(key).replace('~', '~0').replace('/', '~1')}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _leaves(item, f"{pointer}/{i}")
    else:
        yield pointer or "", value


def _ground(pointer: str, value: Any, passages: Mapping[int, Chunk]) -> FieldGrounding:
    if isinstance(value, bool) or value is None or (isinstance(value, str) and not value.strip()):
        return FieldGrounding(pointer, value, "unchecked")
    sources = tuple(source for n, chunk in passages.items() if (source := _found(value, n, chunk)) is not None)
    return FieldGrounding(pointer, value, "supported" if sources else "not_found", sources)


def _found(value: str | int | float, n: int, chunk: Chunk) -> FieldSource | None:
    """Where passage `n` holds `value`: its first sentence that does, or None."""
    for sentence in (s.strip() for s in _SENTENCES.split(chunk.text)):
        if sentence and _holds(sentence, value):
            return FieldSource(n, chunk, sentence)
    return None


def _holds(text: str, value: str | int | float) -> bool:
    if isinstance(value, str):
        wanted, within = _normal(value), _normal(text)
        if wanted in within:
            return True
        return len(wanted.split()) >= 4 and support(value, text) >= _WORDS_MATCH_AT
    return any(re.search(rf"(?<![\w.]){re.escape(spelling)}(?![\w]|\.\d)", text) for spelling in _spellings(value))


def _normal(text: str) -> str:
    return _SPACES.sub(" ", text).strip().casefold()


def _spellings(number: int | float) -> set[str]:
    """How a document may write `number`: 1250, 1250.0, 1,250, 1,250.00 ..."""
    spellings = {repr(number), str(number)}
    if float(number).is_integer():
        whole = int(number)
        spellings |= {str(whole), f"{whole:,}", f"{whole:.2f}", f"{whole:,.2f}"}
    else:
        spellings |= {f"{number:,}", f"{number:.2f}", f"{number:,.2f}"}
    return spellings
