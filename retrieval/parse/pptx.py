"""PPTX via python-pptx: one section per slide (page = slide number, 1-based; heading path = the slide's
title when it has one) holding its text frames in shape order (groups included), its tables as Markdown
tables and its speaker notes after a "Notes:" label. Pictures and charts carry no text here. The package is
checked first (`retrieval.parse.ooxml`)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable, Iterator

import pptx
from pptx.exc import PackageNotFoundError
from pptx.shapes.base import BaseShape
from pptx.shapes.group import GroupShape
from pptx.slide import Slide

from retrieval.errors import CorruptFileError
from retrieval.parse.ooxml import check_xml_package
from retrieval.parse.tables import markdown_table
from retrieval.parse.text import stem_title
from retrieval.types import ParsedDocument, Section


def _shapes(shapes: Iterable[BaseShape]) -> Iterator[BaseShape]:
    for shape in shapes:
        if isinstance(shape, GroupShape):
            yield from _shapes(shape.shapes)
        else:
            yield shape


def _blocks(slide: Slide) -> list[str]:
    """The slide's text frames and tables in shape order, then its notes."""
    blocks = []
    for shape in _shapes(slide.shapes):
        if getattr(shape, "has_table", False):
            rows = [[cell.text for cell in row.cells] for row in shape.table.rows]  # type: ignore[attr-defined]
            table = markdown_table(rows)
            if table:
                blocks.append(table)
        elif shape.has_text_frame:
            text = shape.text_frame.text.strip()  # type: ignore[attr-defined]
            if text:
                blocks.append(text)
    if slide.has_notes_slide:
        notes_frame = slide.notes_slide.notes_text_frame
        notes = notes_frame.text.strip() if notes_frame is not None else ""
        if notes:
            blocks.append(f"Notes: {notes}")
    return blocks


def _title(slide: Slide) -> str:
    shape = slide.shapes.title
    return " ".join(shape.text_frame.text.split()) if shape is not None and shape.has_text_frame else ""


def parse_pptx(data: bytes, name: str) -> ParsedDocument:
    check_xml_package(data, name, "PPTX")
    try:
        presentation = pptx.Presentation(io.BytesIO(data))
        sections = []
        for number, slide in enumerate(presentation.slides, start=1):
            blocks = _blocks(slide)
            if blocks:
                title = _title(slide)
                sections.append(Section(text="\n\n".join(blocks), heading_path=(title,) if title else (), page=number))
        title = (presentation.core_properties.title or "").strip()
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError, AttributeError) as exc:
        raise CorruptFileError(f"{name}: not a readable PPTX file ({exc})") from exc
    if not sections:
        raise CorruptFileError(f"{name}: the PPTX has no text")
    first_slide_title = sections[0].heading_path[0] if sections[0].heading_path else ""
    return ParsedDocument(title=title or first_slide_title or stem_title(name), sections=sections, kind="pptx")
