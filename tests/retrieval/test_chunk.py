"""Chunking with the LLM tokenizer: exact token ids, size bounds, breaks at headings and pages."""

from __future__ import annotations

from appliance.engine.tokenizer import TextTokenizer
from retrieval.chunk import Chunker
from retrieval.types import ParsedDocument, Section

SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river bank. "


def test_token_ids_are_exactly_the_encoding_of_the_text_and_sizes_bounded(tokenizer: TextTokenizer) -> None:
    sections = [
        Section("\n\n".join(SENTENCE * n for n in (3, 12, 40)), ("Doc", "Part A")),
        Section("word " * 900, ("Doc", "Part B")),
    ]
    chunks = Chunker(tokenizer, target_tokens=64).chunk(ParsedDocument("Doc", sections, "md"))
    assert len(chunks) > 5
    for chunk in chunks:
        assert chunk.token_ids == tokenizer.encode(chunk.text)
        assert len(chunk.token_ids) <= 64 + 4  # joins may merge a token or two differently
    assert chunks[0].heading_path == ("Doc", "Part A") and chunks[-1].heading_path == ("Doc", "Part B")
    joined = " ".join(c.text for c in chunks)
    assert joined.count("quick brown fox") == 55


def test_new_heading_starts_a_new_chunk_once_the_current_one_is_big_enough(tokenizer: TextTokenizer) -> None:
    long_text, tiny = SENTENCE * 4, "Short."
    doc = ParsedDocument(
        "T",
        [Section(long_text, ("A",)), Section(long_text, ("B",)), Section(tiny, ("C",)), Section(tiny, ("D",))],
        "md",
    )
    chunks = Chunker(tokenizer, target_tokens=256, min_tokens=32).chunk(doc)
    # B is big enough to close its chunk at C's heading; C is not, so D joins C's chunk
    assert [c.heading_path for c in chunks] == [("A",), ("B",), ("C",)]
    assert chunks[2].text == "Short.\n\nShort."


def test_pages_never_mix(tokenizer: TextTokenizer) -> None:
    doc = ParsedDocument("P", [Section("page one text", page=1), Section("page two text", page=2)], "pdf")
    chunks = Chunker(tokenizer, target_tokens=256).chunk(doc)
    assert [(c.page, c.text) for c in chunks] == [(1, "page one text"), (2, "page two text")]
