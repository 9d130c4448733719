"""ground_fields: each leaf of a JSON answer, by JSON pointer, traced to the passages that hold its value."""

from __future__ import annotations

from appliance.rag.grounding import ground_fields
from retrieval.types import Chunk


def _chunk(chunk_id: int, text: str) -> Chunk:
    return Chunk(chunk_id, f"doc{chunk_id}", "c", 0, text, [], f"Doc {chunk_id}", f"doc{chunk_id}.md", None, ())


PASSAGES = {
    1: _chunk(1, "# Lease\n\nThe tenant is Acme Corp. The rent is 1,250.00 euros a month. Signed on 5 May 2024."),
    2: _chunk(2, "Acme Corp was founded in 1999 by Ada Byron and has 12 offices across northern Europe."),
}


def _by_pointer(answer: str) -> dict:
    fields = ground_fields(answer, PASSAGES)
    assert fields is not None
    return {f.pointer: f for f in fields}


def test_values_found_in_passages_cite_every_passage_and_sentence_that_holds_them() -> None:
    fields = _by_pointer('{"tenant": "acme  corp", "rent": 1250, "founded": 1999}')
    assert fields["/tenant"].status == "supported"
    assert [(s.n, s.quote) for s in fields["/tenant"].sources] == [
        (1, "The tenant is Acme Corp."), (2, PASSAGES[2].text)]  # case and spacing do not matter
    assert [(s.n, s.quote) for s in fields["/rent"].sources] == [(1, "The rent is 1,250.00 euros a month.")]
    assert [s.n for s in fields["/founded"].sources] == [2]


def test_values_no_passage_holds_are_not_found() -> None:
    fields = _by_pointer('{"tenant": "Globex", "rent": 125, "offices": 1.2, "year": 2024.5}')
    assert {p: f.status for p, f in fields.items()} == {
        "/tenant": "not_found", "/rent": "not_found", "/offices": "not_found", "/year": "not_found"}
    assert all(f.sources == () for f in fields.values())  # 125 is not a prefix match of 1,250; 1.2 not of 12


def test_pointers_follow_rfc_6901_through_objects_and_arrays() -> None:
    fields = _by_pointer('{"people": [{"name": "Ada Byron"}, {"name": "Bob"}], "a/b": {"~x": 12}}')
    assert list(fields) == ["/people/0/name", "/people/1/name", "/a~1b/~0x"]
    assert fields["/people/0/name"].status == "supported" and fields["/people/1/name"].status == "not_found"
    assert fields["/a~1b/~0x"].value == 12 and fields["/a~1b/~0x"].status == "supported"


def test_a_long_value_is_found_by_its_content_words() -> None:
    fields = _by_pointer('{"summary": "Ada Byron founded Acme Corp, which has offices across Europe"}')
    assert fields["/summary"].status == "supported" and [s.n for s in fields["/summary"].sources] == [2]


def test_booleans_nulls_and_empty_text_are_unchecked_and_non_json_is_none() -> None:
    fields = _by_pointer('{"signed": true, "note": null, "empty": " ", "list": []}')
    assert {p: f.status for p, f in fields.items()} == {"/signed": "unchecked", "/note": "unchecked",
                                                      "/empty": "unchecked"}
    assert ground_fields('{"cut off": "by max_to', PASSAGES) is None
