"""Token-aware chunking with the LLM's own tokenizer.

A chunk holds up to about `target_tokens` tokens. Breaks are preferred at headings (a new section starts a
new chunk once the current one has `min_tokens`), then paragraphs, then sentences, then words. A Markdown
table (`retrieval.parse.tables`) is never cut by sentences: a table longer than a chunk is cut between rows,
and every piece starts with the table's header row and `| --- |` rule (only a single row longer than a chunk
is cut by words, as a long sentence would be). The stored
`token_ids` are `tokenizer.encode(text)` of the final chunk text, computed once here: the document KV cache
keys on them, so nobody re-tokenizes a joined string later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from retrieval.parse.tables import is_table_line
from retrieval.types import ChunkDraft, ParsedDocument, Section

_PARAGRAPH = re.compile(r"\n[ \t]*\n+")
_SENTENCE = re.compile(r"(?<=[.!?:;])\s+|\n")
_RULE = re.compile(r"^\|(\s*:?-{3,}:?\s*\|)+$")


def _blocks(paragraph: str) -> list[tuple[bool, list[str]]]:
    """The paragraph's runs of lines as (is_table, lines): tables are consecutive table lines."""
    blocks: list[tuple[bool, list[str]]] = []
    for line in paragraph.split("\n"):
        table = is_table_line(line)
        if blocks and blocks[-1][0] == table:
            blocks[-1][1].append(line)
        else:
            blocks.append((table, [line]))
    return blocks


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class _Unit:
    text: str
    tokens: int
    section: Section


class Chunker:
    """`chunk(doc)` -> ordered ChunkDrafts; chunks never mix pages or heading paths unless the earlier part
    is shorter than `min_tokens` (then the chunk keeps its first part's page and heading path)."""

    def __init__(self, tokenizer: Tokenizer, target_tokens: int = 256, min_tokens: int | None = None) -> None:
        if target_tokens < 16:
            raise ValueError("chunk size must be at least 16 tokens")
        self.tokenizer = tokenizer
        self.target = target_tokens
        self.min_tokens = target_tokens // 4 if min_tokens is None else min_tokens

    def _count(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def _split_words(self, text: str, tokens: int) -> list[tuple[str, int]]:
        words = text.split()
        per_group = max(1, int(len(words) * self.target / max(tokens, 1) * 0.9))
        out: list[tuple[str, int]] = []
        start = 0
        while start < len(words):
            size = per_group
            while True:
                piece = " ".join(words[start : start + size])
                count = self._count(piece)
                if count <= self.target or size == 1:
                    break
                size = max(1, size // 2)
            out.append((piece, count))
            start += size
        return out

    def _text_pieces(self, text: str) -> list[tuple[str, int]]:
        """Text (no table) as pieces of at most `target` tokens: sentences, then words, when needed."""
        tokens = self._count(text)
        if tokens <= self.target:
            return [(text, tokens)]
        out: list[tuple[str, int]] = []
        for sentence in _SENTENCE.split(text):
            if not sentence.strip():
                continue
            count = self._count(sentence)
            out.extend([(sentence, count)] if count <= self.target else self._split_words(sentence, count))
        return out

    def _table_pieces(self, lines: list[str]) -> list[tuple[str, int]]:
        """A table as pieces of whole rows within `target` tokens, each piece led by the header and rule."""
        text = "\n".join(lines)
        tokens = self._count(text)
        if tokens <= self.target:
            return [(text, tokens)]
        header = lines[:2] if len(lines) > 2 and _RULE.match(lines[1].strip()) else []
        head_tokens = self._count("\n".join(header)) + 1 if header else 0
        out: list[tuple[str, int]] = []
        rows: list[str] = []
        size = head_tokens

        def flush() -> None:
            if rows:
                piece = "\n".join(header + rows)
                out.append((piece, self._count(piece)))
                rows.clear()

        for row in lines[len(header):]:
            count = self._count(row) + 1  # with its newline
            if head_tokens + count > self.target:  # one row longer than a chunk: cut by words
                flush()
                size = head_tokens
                out.extend(self._split_words(row, count))
                continue
            if rows and size + count > self.target:
                flush()
                size = head_tokens
            rows.append(row)
            size += count
        flush()
        return out

    def _pieces(self, paragraph: str) -> list[tuple[str, int]]:
        """The paragraph as pieces of at most `target` tokens; its tables are cut only between rows."""
        tokens = self._count(paragraph)
        if tokens <= self.target:
            return [(paragraph, tokens)]
        out: list[tuple[str, int]] = []
        for table, lines in _blocks(paragraph):
            if table:
                out.extend(self._table_pieces(lines))
            elif "\n".join(lines).strip():
                out.extend(self._text_pieces("\n".join(lines).strip()))
        return out

    def _units(self, doc: ParsedDocument) -> list[_Unit]:
        units: list[_Unit] = []
        for section in doc.sections:
            for paragraph in _PARAGRAPH.split(section.text):
                if paragraph.strip():
                    units.extend(_Unit(text, count, section) for text, count in self._pieces(paragraph.strip()))
        return units

    def chunk(self, doc: ParsedDocument) -> list[ChunkDraft]:
        groups: list[list[_Unit]] = []
        size = 0
        for unit in self._units(doc):
            current = groups[-1] if groups else None
            new_section = (
                current is not None
                and unit.section is not current[-1].section
                and (unit.section.page != current[0].section.page or size >= self.min_tokens)
            )
            if current is None or size + unit.tokens > self.target or new_section:
                groups.append([unit])
                size = unit.tokens
            else:
                current.append(unit)
                size += unit.tokens
        drafts = []
        for group in groups:
            text = "\n\n".join(u.text for u in group)
            first = group[0].section
            drafts.append(
                ChunkDraft(
                    text=text,
                    token_ids=self.tokenizer.encode(text),
                    heading_path=first.heading_path,
                    page=first.page,
                )
            )
        return drafts
