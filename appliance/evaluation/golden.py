"""The golden file: questions with what a right run retrieves and answers, one JSON object a line (JSONL).

Format (also what `GET /api/admin/feedback?format=jsonl` exports)::

    {"question": str, "collection": str (optional), "expected_answer": str | null,
     "expected_chunk_ids": [int], "expected_pages": [str], ...}

`question` is required and non-empty; the other keys may be absent or null; unknown keys are ignored. Blank
lines are skipped. A line whose `collection` names another collection than the one evaluated is skipped and
counted. An expected page is a document's source file name ("json.html"); a path is reduced to its name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any


class GoldenError(ValueError):
    """The golden file cannot be used as it is; the message names the file and, where it applies, the line."""


@dataclass(frozen=True)
class GoldenItem:
    """One golden question. `line` is its 1-based line number in the file."""

    line: int
    question: str
    expected_answer: str | None
    expected_chunk_ids: tuple[int, ...]
    expected_pages: tuple[str, ...]  # file names, e.g. "json.html"


@dataclass(frozen=True)
class GoldenSet:
    """The questions of one collection (`items`, never empty) and how many lines were for other collections."""

    path: Path
    collection: str
    items: tuple[GoldenItem, ...]
    skipped: int


def page_name(source: str) -> str:
    """The file name of a document source or an expected page: "/docs/library/json.html" -> "json.html"."""
    return PurePosixPath(source.replace("\\", "/")).name


def load_golden(path: Path, collection: str) -> GoldenSet:
    """Read and check the whole file, keeping the questions for `collection`.

    Raises GoldenError (nothing is returned half-read): the file is missing or unreadable, a line is not a
    JSON object, lacks a non-empty string `question`, or has a key of the wrong type; or no question is left
    for `collection`.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GoldenError(f"{path}: no such golden file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GoldenError(f"{path}: cannot read the golden file ({exc})") from None
    items: list[GoldenItem] = []
    skipped = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GoldenError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise GoldenError(f"{path}:{number}: not a JSON object")
        item, where = _item(row, number, f"{path}:{number}")
        if where is not None and where != collection:
            skipped += 1
        else:
            items.append(item)
    if not items:
        other = f" ({skipped} lines are for other collections)" if skipped else ""
        raise GoldenError(f"{path}: no question for collection {collection!r}{other}")
    return GoldenSet(path, collection, tuple(items), skipped)


def _item(row: dict[str, Any], number: int, at: str) -> tuple[GoldenItem, str | None]:
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise GoldenError(f"{at}: needs a non-empty string \"question\"")
    collection = _optional(row, "collection", str, at)
    answer = _optional(row, "expected_answer", str, at)
    chunk_ids = _list(row, "expected_chunk_ids", int, at)
    pages = _list(row, "expected_pages", str, at)
    item = GoldenItem(number, question.strip(), answer if answer and answer.strip() else None,
                      tuple(dict.fromkeys(chunk_ids)), tuple(dict.fromkeys(page_name(p) for p in pages)))
    return item, collection


def _optional(row: dict[str, Any], key: str, kind: type, at: str) -> Any:
    value = row.get(key)
    if value is not None and not isinstance(value, kind):
        raise GoldenError(f"{at}: \"{key}\" must be a {kind.__name__} or null")
    return value


def _list(row: dict[str, Any], key: str, kind: type, at: str) -> list[Any]:
    value = row.get(key)
    if value is None:
        return []
    # bool is an int to Python, never a chunk id
    if not isinstance(value, list) or any(not isinstance(v, kind) or isinstance(v, bool) for v in value):
        raise GoldenError(f"{at}: \"{key}\" must be a list of {kind.__name__} values")
    return value
