"""Chunking keeps Markdown tables whole: a long table is cut between rows only, every piece repeats the header
row and the rule, and sentence splitting never reaches inside a table."""

from __future__ import annotations

import re

from appliance.engine.tokenizer import TextTokenizer
from retrieval.chunk import Chunker
from retrieval.parse.tables import is_table_line, markdown_table
from retrieval.types import ParsedDocument, Section

HEADER = ["City", "Country", "Population. Note: approx."]
ROWS = [[f"Town {i}. Capital: no", f"Land {i % 7}", f"{1000 + i * 37}. Estimated!"] for i in range(120)]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _tables(text: str) -> list[list[str]]:
    """The runs of table lines in a chunk."""
    tables: list[list[str]] = []
    previous = False
    for line in text.split("\n"):
        if is_table_line(line):
            if not previous:
                tables.append([])
            tables[-1].append(line)
        previous = is_table_line(line)
    return tables


def test_a_long_table_is_cut_between_rows_and_every_piece_repeats_the_header(tokenizer: TextTokenizer) -> None:
    table = markdown_table([HEADER, *ROWS])
    intro = "The table below lists towns. Each row is one town. " * 3
    doc = ParsedDocument("Towns", [Section(f"{intro}\n{table}\n\nThat is all. Thanks for reading.", ("Towns",))], "csv")
    chunks = Chunker(tokenizer, target_tokens=128).chunk(doc)
    table_chunks = [c for c in chunks if _tables(c.text)]
    assert len(table_chunks) > 5
    header_line, rule = table.split("\n")[:2]
    seen: list[list[str]] = []
    for chunk in table_chunks:
        (lines,) = _tables(chunk.text)  # one table per chunk, never interleaved with prose
        assert lines[0] == header_line and lines[1] == rule
        assert all(len(_cells(line)) == len(HEADER) for line in lines)
        seen.extend(_cells(line) for line in lines[2:])
        assert len(chunk.token_ids) <= 128 + 4
    assert seen == [[str(v) for v in row] for row in ROWS]  # every row exactly once, in order
    prose = " ".join(c.text for c in chunks if not _tables(c.text))
    assert "The table below lists towns." in prose and "Thanks for reading." in prose


def test_a_short_table_stays_in_one_chunk_with_its_text(tokenizer: TextTokenizer) -> None:
    table = markdown_table([HEADER, *ROWS[:3]])
    doc = ParsedDocument("Towns", [Section(f"Three towns. See below.\n{table}")], "csv")
    (chunk,) = Chunker(tokenizer, target_tokens=256).chunk(doc)
    assert chunk.text == f"Three towns. See below.\n{table}"


def test_a_row_longer_than_a_chunk_is_the_one_piece_cut_by_words(tokenizer: TextTokenizer) -> None:
    long_cell = "word " * 300
    table = markdown_table([["Key", "Value"], ["a", "1"], ["b", long_cell], ["c", "3"]])
    chunks = Chunker(tokenizer, target_tokens=64).chunk(ParsedDocument("T", [Section(table)], "csv"))
    assert all(len(c.token_ids) <= 64 + 4 for c in chunks)
    texts = [c.text for c in chunks]
    assert texts[0] == "| Key | Value |\n| --- | --- |\n| a | 1 |"
    assert texts[-1].endswith("\n\n| Key | Value |\n| --- | --- |\n| c | 3 |")  # after the row's last words
    assert " ".join(texts).count("word") == 300
