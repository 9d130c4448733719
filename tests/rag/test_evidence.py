"""evidence_for: the passage sentences that best back an answer, quoted verbatim from the passage."""

from __future__ import annotations

import math

from hypothesis import example, given, settings
from hypothesis import strategies as st

from appliance.rag.citations import Citation, check_citations
from appliance.rag.evidence import (
    MAX_QUOTE,
    code_words,
    evidence_for,
    evidence_json,
    focus_term,
    sentence_spans,
)
from retrieval.types import Chunk


def _chunk(chunk_id: int, text: str) -> Chunk:
    return Chunk(chunk_id, f"doc{chunk_id}", "c", 0, text, [], f"Doc {chunk_id}", f"doc{chunk_id}.md", 3, ())


EXPAT = _chunk(7, "xml.parsers.expat.ErrorString(errno)\n"
                  "Returns an explanatory string for a given error number errno.\n"
                  "xml.parsers.expat.ExpatError\nThe exception raised when Expat reports an error.")
WORDS = st.sampled_from(["expat", "error", "string", "the", "returns", "Mars", "moons", "a", "xml.parsers",
                         "ErrorString()", "[1]", "é", "  ", "\n", ".", "!", "? ", "\t", "12", "x" * 40])
TEXTS = st.lists(WORDS, max_size=80).map(" ".join) | st.text(max_size=400)


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(TEXTS, min_size=1, max_size=4), answer=TEXTS, question=TEXTS, limit=st.integers(1, 4))
@example(texts=["word " * 200], answer="word", question="", limit=3)  # a long span, cut into pieces
def test_every_quote_is_verbatim_from_its_passage(texts: list[str], answer: str, question: str,
                                                   limit: int) -> None:
    passages = {n: _chunk(n, text) for n, text in enumerate(texts, start=1)}
    evidence = evidence_for(answer, question, passages, check_citations(answer, passages), limit)
    assert len(evidence) <= limit
    assert len({e.quote for e in evidence}) == len(evidence)  # different sentences
    ranks = [(e.defines, e.score) for e in evidence]  # definitions of the asked name first, then by score
    assert ranks == sorted(ranks, reverse=True)
    for e in evidence:
        assert e.chunk is passages[e.n]
        assert e.quote == passages[e.n].text[e.start:e.end] and e.quote == e.quote.strip() and e.quote
        assert len(e.quote) <= MAX_QUOTE


def test_the_sentence_naming_the_answer_wins_over_question_words() -> None:
    evidence = evidence_for("xml.parsers.expat [1]", "What does ErrorString() return?", {1: EXPAT}, [])
    assert [e.quote for e in evidence] == ["xml.parsers.expat.ErrorString(errno)"]  # scores on errorstring too


def test_answer_words_weigh_more_than_question_words() -> None:
    passages = {1: _chunk(1, "The message for an error number is returned by this function.\n"
                             "See xml.parsers.expat for details.")}
    evidence = evidence_for("xml.parsers.expat", "Which function gives the message for an error number?",
                            passages, [], limit=2)
    # 3 answer words x 2 and 4 question words x 1, each over the square root of the sentence's 5 content words
    assert [(e.quote, e.score) for e in evidence] == [("See xml.parsers.expat for details.", 6 / math.sqrt(5)),
                                                      (passages[1].text.splitlines()[0], 4 / math.sqrt(5))]


def test_a_question_only_match_still_gives_evidence() -> None:
    evidence = evidence_for("I don't know.", "What does ErrorString() return?", {1: EXPAT}, [])
    assert [(e.n, e.quote) for e in evidence] == [(1, "xml.parsers.expat.ErrorString(errno)")]


def test_a_cited_supported_passage_is_preferred_over_an_uncited_one_with_equal_overlap() -> None:
    passages = {1: _chunk(1, "Mars has two moons, Deimos and Phobos."),
                2: _chunk(2, "Mars has two moons, Phobos and Deimos.")}
    answer = "Mars has two moons [2]."
    citations = check_citations(answer, passages)
    assert [(c.n, c.kind, c.supported) for c in citations] == [(2, "cited", True)]
    assert [e.n for e in evidence_for(answer, "", passages, citations, limit=2)] == [2, 1]
    assert [e.n for e in evidence_for(answer, "", passages, [], limit=2)] == [1, 2]  # uncited: lower number first


def test_an_inferred_passage_is_preferred_over_the_rest_but_not_over_a_cited_one() -> None:
    passages = {n: _chunk(n, "Jupiter has ninety five moons.") for n in (1, 2, 3)}
    sentence = "Jupiter has ninety five moons."
    citations = [Citation(3, passages[3], sentence, "inferred", True, 1.0),
                 Citation(2, passages[2], sentence, "cited", True, 1.0),
                 Citation(1, passages[1], sentence, "cited", False, 0.2)]  # cited without support: no preference
    evidence = evidence_for(sentence, "", passages, citations, limit=3)
    assert [e.n for e in evidence] == [2]  # the same text in three passages is one piece of evidence
    assert [e.n for e in evidence_for(sentence, "", passages, citations[:1])] == [3]


def test_limit_and_order_best_first() -> None:
    passages = {1: _chunk(1, "Expat parses XML. ErrorString returns an error string.\nUnrelated line here.")}
    evidence = evidence_for("ErrorString returns a string for an error", "What is ErrorString?", passages, [],
                            limit=5)
    assert [e.quote for e in evidence] == ["ErrorString returns an error string."]  # the others share nothing
    passages = {1: EXPAT}
    evidence = evidence_for("Expat reports an error string", "", passages, [], limit=2)
    assert [e.quote for e in evidence] == ["The exception raised when Expat reports an error.",
                                           "Returns an explanatory string for a given error number errno."]
    assert evidence[0].score > evidence[1].score
    assert len(evidence_for("Expat reports an error string", "", passages, [], limit=10)) == 4


def test_no_passages_or_no_shared_word_give_no_evidence() -> None:
    assert evidence_for("Mars has moons", "How many moons?", {}, []) == []
    assert evidence_for("Mars has moons", "How many moons?", {1: _chunk(1, "  \n. ! ")}, []) == []
    assert evidence_for("Mars has moons", "How many?", {1: EXPAT}, []) == []


def test_sentences_split_at_ends_and_newlines_and_long_ones_on_word_boundaries() -> None:
    table = "| rows | cellar " * 40
    text = f"  First one. Second one!\n\nThird?x. Fourth\n e.g. \n{table}\n"
    spans = list(sentence_spans(text))
    quotes = [text[s:e] for s, e in spans]
    assert quotes[:4] == ["First one.", "Second one!", "Third?x.", "Fourth"]  # "e.g." has no content word
    rows = quotes[4:]
    assert len(rows) > 1 and "".join(rows).replace(" ", "") == table.replace(" ", "")
    assert all(len(r) <= MAX_QUOTE for r in rows)
    assert all(text[s - 1].isspace() and text[e].isspace() for s, e in spans[4:])  # cut between words


def test_evidence_json_names_the_passage_and_the_quote() -> None:
    [e] = evidence_for("xml.parsers.expat [1]", "What does ErrorString() return?", {1: EXPAT}, [])
    assert evidence_json([e]) == [{"n": 1, "chunk_id": 7, "doc_id": "doc7", "title": "Doc 7", "page": 3,
                                   "quote": "xml.parsers.expat.ErrorString(errno)", "start": 0, "end": 36}]


def test_the_quote_is_about_what_the_question_names_even_when_the_answer_is_wrong() -> None:
    """The question names `clear_cache()`: only sentences mentioning it are candidates, so a wrong answer's words
    (codecs, encode, decode) cannot pull the quote to another passage; among them the shorter, denser one."""
    passages = {1: _chunk(1, "The codecs module can encode and decode text to bytes and clear a cache."),
                2: _chunk(2, "The entire cache of comparisons may be cleared using clear_cache() when files change "
                             "often.\nfilecmp.clear_cache()\nClear the filecmp cache.")}
    question = "Which Python standard library module provides the function clear_cache()?"
    evidence = evidence_for("The codecs module provides clear_cache() to encode and decode text.", question, passages,
                            [], limit=2)
    assert [e.quote for e in evidence] == ["filecmp.clear_cache()", passages[2].text.splitlines()[0]]


def test_the_focus_is_an_identifier_before_a_capitalised_word_then_the_rarest() -> None:
    sentences = [{"python", "glob"}, {"python", "iglob"}, {"iglob", "glob"}, {"meter"}]
    assert focus_term("Which Python module provides iglob()?", sentences) == "iglob"  # called: before Python
    assert focus_term("Which Python module provides glob?", sentences) == "python"  # only capitalised
    assert focus_term("Which Python module has the class Meter?", sentences) == "meter"  # rarer than python
    assert focus_term("Which module provides the class Gauge?", sentences) is None  # named, but not mentioned
    assert focus_term("Which module reads files?", sentences) is None
    # a word the passages write as code (`glob`, `glob.glob`) names the subject better than a capitalised one
    assert focus_term("Which Python module provides glob?", sentences, code={"glob"}) == "glob"
    assert focus_term("Which Python module provides iglob()?", sentences, code={"python"}) == "iglob"


def test_code_words_are_those_in_backticks_or_after_a_qualifier() -> None:
    text = "Use `dircmp` or `os.path.join(a, b)`; filecmp.cmpfiles(dir1) too. Python 3.11 is not code."
    assert code_words([text, "`Token` objects"]) == {"dircmp", "os", "path", "join", "a", "b", "cmpfiles", "token"}
    # every part after a qualifier, however deep the name
    assert code_words(["class tkinter.tix.tixCommand and xml.etree.ElementTree.TreeBuilder"]) == {
        "tix", "tixcommand", "etree", "elementtree", "treebuilder"}


def test_a_sentence_that_defines_the_asked_name_is_quoted_first() -> None:
    """"Python" is capitalised but the passages write `dircmp` as code: it is the focus; of the sentences naming
    it, the one writing it qualified (its definition, which names its module) comes before a denser one that
    shares more of the (wrong) answer's words."""
    passages = {1: _chunk(1, "This module defines base classes for standard Python codecs."),
                2: _chunk(2, "The `dircmp` class compares directories, as the codecs module compares nothing.\n"
                             "class filecmp.dircmp(a, b, ignore=None, hide=None)\nConstruct a new directory "
                             "comparison object.")}
    question = "Which Python standard library module provides the class dircmp?"
    [e] = evidence_for("The codecs module provides the dircmp class.", question, passages, [])
    assert (e.quote, e.defines) == ("class filecmp.dircmp(a, b, ignore=None, hide=None)", True)
    [plain] = evidence_for("The codecs module provides the dircmp class.", question,
                           {1: passages[1], 2: _chunk(2, passages[2].text.replace("filecmp.dircmp", "dircmp"))}, [])
    assert plain.quote.startswith("The `dircmp` class") and not plain.defines
