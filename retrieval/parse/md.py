"""Markdown: ATX headings (`#`..`######`) become the heading path; fenced code is kept verbatim."""

from __future__ import annotations

import re

from retrieval.parse.text import decode_text, stem_title
from retrieval.types import ParsedDocument, Section

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def markdown_sections(text: str) -> tuple[str | None, list[Section]]:
    """Split Markdown text at headings: returns (first level-1 heading or None, sections in order).

    A section's heading path is the stack of headings above it (its own heading included); the heading
    line itself stays in the section's text so the chunk reads naturally.
    """
    title: str | None = None
    stack: list[tuple[int, str]] = []
    sections: list[Section] = []
    lines: list[str] = []
    in_fence = False

    def flush() -> None:
        body = "\n".join(lines).strip()
        if body:
            sections.append(Section(text=body, heading_path=tuple(h for _, h in stack)))
        lines.clear()

    for line in text.replace("\r\n", "\n").split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line)
        if match:
            flush()
            level, heading = len(match.group(1)), match.group(2).strip()
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, heading))
            if level == 1 and title is None:
                title = heading
        lines.append(line)
    flush()
    return title, sections


def parse_md(data: bytes, name: str) -> ParsedDocument:
    title, sections = markdown_sections(decode_text(data, name))
    return ParsedDocument(title=title or stem_title(name), sections=sections, kind="md")
