"""Metadata filters of a search: which documents may answer (`SearchFilters`), their validation, their SQL
over the `documents` table, and the same test on a stored chunk (the defence-in-depth re-check).

Semantics (every given part must hold; an empty filter admits everything):
- `tags` {key: value}: the document carries every one of these tags with exactly this value;
- `modified_after`: the document's `modified` time (the file's mtime at ingest, the upload time for an
  upload) is at or after this instant (ISO 8601 date or date-time; a date is its midnight, a time without
  an offset is UTC);
- `content_types`: the document's parser kind is one of these (`pdf`, `html`, `md`, `txt`, `docx`, `pptx`,
  `xlsx`, `csv`, `eml`, `epub`, `image`);
- `doc_ids`: the document is one of these.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from retrieval.types import Chunk

TAG_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
_TAG_KEY = re.compile(TAG_KEY_PATTERN)
_TAG_VALUE_MAX = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_TAGS = 32  # per document, and per filter
MAX_DOC_IDS = 1000
_DOC_ID = re.compile(r"^[0-9a-f]{1,64}$")
CONTENT_TYPES = ("pdf", "html", "md", "txt", "docx", "pptx", "xlsx", "csv", "eml", "epub", "image")


class FilterError(ValueError):
    """A filter or a tag that cannot be used (the HTTP boundary answers 422)."""


def check_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """`tags` if every key and value is acceptable: a key is 1-64 letters, digits, '_', '.', ':' or '-'
    starting with a letter or digit; a value is 1-256 characters without control characters; at most 32."""
    if len(tags) > MAX_TAGS:
        raise FilterError(f"at most {MAX_TAGS} tags, not {len(tags)}")
    for key, value in tags.items():
        if not isinstance(key, str) or not _TAG_KEY.match(key):
            raise FilterError(f"invalid tag key {key!r}: use 1-64 letters, digits, '_', '.', ':' or '-', "
                              "starting with a letter or digit")
        if not isinstance(value, str) or not value.strip() or len(value) > _TAG_VALUE_MAX or _CONTROL.search(value):
            raise FilterError(f"invalid value for tag {key!r}: 1-{_TAG_VALUE_MAX} characters, no control characters")
    return dict(tags)


def parse_tag_args(pairs: Iterable[str]) -> dict[str, str]:
    """`["k=v", ...]` (the CLI's `--tag`, the upload's `tag` fields) -> {k: v}; a key given twice keeps its
    last value. Raises FilterError."""
    tags: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise FilterError(f"a tag is key=value, not {pair!r}")
        tags[key.strip()] = value.strip()
    return check_tags(tags)


def parse_instant(text: str) -> float:
    """An ISO 8601 date (`2024-05-01`: its midnight UTC) or date-time (without an offset: UTC) -> epoch
    seconds. Raises FilterError."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise FilterError(f"modified_after: {text!r} is not an ISO 8601 date or date-time") from exc
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


@dataclass(frozen=True)
class SearchFilters:
    """Which documents a search may return; see the module docstring. Build with `SearchFilters.of`."""

    tags: tuple[tuple[str, str], ...] = ()
    modified_after: float | None = None
    content_types: tuple[str, ...] = ()
    doc_ids: tuple[str, ...] = ()

    @classmethod
    def of(cls, tags: Mapping[str, str] | None = None, modified_after: str | float | None = None,
           content_types: Iterable[str] | None = None, doc_ids: Iterable[str] | None = None) -> SearchFilters:
        """Validated filters (None or empty parts are absent). Raises FilterError."""
        kinds = tuple(dict.fromkeys(content_types or ()))
        unknown = [k for k in kinds if k not in CONTENT_TYPES]
        if unknown:
            raise FilterError(f"unknown content_type {unknown[0]!r}: one of {', '.join(CONTENT_TYPES)}")
        ids = tuple(dict.fromkeys(doc_ids or ()))
        if len(ids) > MAX_DOC_IDS or any(not _DOC_ID.match(i) for i in ids):
            raise FilterError(f"doc_ids: at most {MAX_DOC_IDS} document ids (hexadecimal)")
        after = parse_instant(modified_after) if isinstance(modified_after, str) else modified_after
        return cls(tuple(sorted(check_tags(tags or {}).items())), after, kinds, ids)

    @property
    def empty(self) -> bool:
        return not (self.tags or self.content_types or self.doc_ids) and self.modified_after is None

    def sql(self) -> tuple[str, list[object]]:
        """A condition on the `documents` row aliased `d` (`"1"` when empty), and its parameters."""
        parts: list[str] = []
        params: list[object] = []
        for key, value in self.tags:
            parts.append("EXISTS (SELECT 1 FROM document_tags t WHERE t.doc_id = d.doc_id AND t.key = ? "
                         "AND t.value = ?)")
            params += [key, value]
        if self.modified_after is not None:
            parts.append("d.modified >= ?")
            params.append(self.modified_after)
        if self.content_types:
            parts.append(f"d.content_type IN ({','.join('?' * len(self.content_types))})")
            params += list(self.content_types)
        if self.doc_ids:
            parts.append(f"d.doc_id IN ({','.join('?' * len(self.doc_ids))})")
            params += list(self.doc_ids)
        return (" AND ".join(parts) or "1"), params

    def admits(self, chunk: Chunk) -> bool:
        """Whether the stored chunk's document passes (the same test as `sql`, on a chunk read from the store)."""
        tags = dict(chunk.tags)
        return (all(tags.get(key) == value for key, value in self.tags)
                and (self.modified_after is None
                     or (chunk.modified is not None and chunk.modified >= self.modified_after))
                and (not self.content_types or chunk.content_type in self.content_types)
                and (not self.doc_ids or chunk.doc_id in self.doc_ids))


NO_FILTERS = SearchFilters()


class AllowedIds:
    """The chunk ids a filtered search may return in one collection (what `SearchFilters` resolve to), with
    the two fast membership forms the indexes use: a flag per id (BM25 rows) and a bitmap (FAISS's
    `IDSelectorBitmap`, bit `i & 7` of byte `i >> 3`)."""

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = np.unique(np.asarray(ids, dtype=np.int64))  # sorted, distinct
        self.ids = self.ids[self.ids >= 0]

    def __len__(self) -> int:
        return len(self.ids)

    @cached_property
    def _flags(self) -> np.ndarray:
        flags = np.zeros(int(self.ids[-1]) + 1 if len(self.ids) else 0, dtype=bool)
        flags[self.ids] = True
        return flags

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """A bool per id of `ids`: whether it is allowed."""
        ids = np.asarray(ids, dtype=np.int64)
        inside = (ids >= 0) & (ids < len(self._flags))
        found = np.zeros(len(ids), dtype=bool)
        found[inside] = self._flags[ids[inside]]
        return found

    @cached_property
    def bitmap(self) -> np.ndarray:
        """uint8 bitmap over ids 0..len(flags)-1, little bit order within each byte."""
        return np.packbits(self._flags, bitorder="little")

    @property
    def bound(self) -> int:
        """Ids at or past this are not allowed (the bitmap's length in bits)."""
        return len(self._flags)
