"""Citation steering inside `CitationConstraint` (real tokenizer, synthetic logits; real model for the engine),
the engine's `bind` seam, and `check_citations`' marker-only segments."""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from appliance.engine.engine import LLMEngine
from appliance.engine.sampling import SamplingParams, TokenizerAware
from appliance.engine.tokenizer import TextTokenizer
from appliance.rag.citations import CitationConstraint, check_citations, sentences, support
from appliance.rag.prompt import PromptBuilder
from retrieval.types import Chunk

PASSAGES = {1: "The xml.parsers.expat module parses XML documents quickly.",
            2: "Paris is the capital of France and its largest city."}
SUPPORTED = "Paris is the capital of France."  # passage 2's words
UNSUPPORTED = "The moon is made of green cheese."


@pytest.fixture(scope="module")
def tok(loaded_model):  # noqa: ANN001, ANN201
    return loaded_model.tokenizer


@pytest.fixture(scope="module")
def steering(tok: TextTokenizer) -> CitationConstraint:
    constraint = CitationConstraint(tok, PASSAGES, PASSAGES)
    constraint.bind(tok)
    return constraint


def _id(tok: TextTokenizer, text: str) -> int:
    """The one token whose text is `text`."""
    (tid,) = tok.encode_template(text) if text.startswith("<|") else tok.encode(text)
    return tid


def _logits(tok: TextTokenizer, favourites: dict[str, float], seed: int = 0) -> torch.Tensor:
    """Random logits [V] in [0, 1) with the tokens of `favourites` (texts) set to their values."""
    logits = torch.rand(tok.vocab_size, generator=torch.Generator().manual_seed(seed))
    for text, value in favourites.items():
        logits[_id(tok, text)] = value
    return logits


def _best(tok: TextTokenizer, logits: torch.Tensor) -> str:
    return tok.decode([int(logits.argmax())], skip_special_tokens=False)


def test_a_supported_sentence_is_cited_at_its_end_with_its_passage(tok: TextTokenizer,
                                                                   steering: CitationConstraint) -> None:
    generated = tok.encode(SUPPORTED)
    logits = _logits(tok, {"<|im_end|>": 9.0, " [": 2.0})
    assert _best(tok, steering(generated, logits.clone())) == " ["
    generated.append(_id(tok, " ["))
    inside = steering(generated, _logits(tok, {"1": 9.0, "2": 1.0}))  # the model would say [1]: passage 2 wins
    assert _best(tok, inside) == "2"
    plain = CitationConstraint(tok, PASSAGES)
    assert torch.equal(torch.isfinite(inside), torch.isfinite(plain(generated, torch.zeros(tok.vocab_size))))
    generated.append(_id(tok, "2"))
    assert _best(tok, steering(generated, _logits(tok, {"].": 9.0, "]": 1.0}))) == "]"
    generated.append(_id(tok, "]"))
    assert tok.decode(generated) == SUPPORTED + " [2]"
    logits = _logits(tok, {"<|im_end|>": 9.0})  # the sentence has its marker now
    assert torch.equal(steering(generated, logits.clone()), logits)


@pytest.mark.parametrize("after", ["\n", " It"])
def test_a_new_line_or_a_word_after_the_full_stop_ends_the_sentence_too(tok: TextTokenizer,
                                                                        steering: CitationConstraint,
                                                                        after: str) -> None:
    assert _best(tok, steering(tok.encode(SUPPORTED), _logits(tok, {after: 9.0}))) == " ["
    # after whitespace the opener is a bare `[`
    assert _best(tok, steering(tok.encode("Paris is the capital of France "), _logits(tok, {"<|im_end|>": 9.0}))) == "["


@pytest.mark.parametrize(("text", "top"), [
    (UNSUPPORTED, "<|im_end|>"),  # no passage supports it
    ("Paris is the capital of France [2].", "<|im_end|>"),  # it cites already
    ("XML documents are parsed by xml.", "pars"),  # a `.` inside a name: no whitespace follows
    ("XML documents are parsed by xml", " module"),  # not a sentence end
    ("", "<|im_end|>"),  # no words
])
def test_other_positions_are_left_as_they_are(tok: TextTokenizer, steering: CitationConstraint, text: str,
                                              top: str) -> None:
    logits = _logits(tok, {top: 9.0})
    assert torch.equal(steering(tok.encode(text), logits.clone()), logits)


def test_the_name_sentence_is_steered_once_it_ends(tok: TextTokenizer, steering: CitationConstraint) -> None:
    """The counterpart of the mid-name `.`: the same sentence, supported by passage 1, at its real end."""
    generated = tok.encode("XML documents are parsed by xml.parsers.expat.")
    assert _best(tok, steering(generated, _logits(tok, {" It": 9.0}))) == " ["
    assert _best(tok, steering([*generated, _id(tok, " [")], _logits(tok, {"2": 9.0}))) == "1"


def test_without_passages_or_bind_it_is_the_plain_constraint(tok: TextTokenizer) -> None:
    plain = CitationConstraint(tok, PASSAGES)
    unbound = CitationConstraint(tok, PASSAGES, PASSAGES)
    no_passages = CitationConstraint(tok, PASSAGES)
    no_passages.bind(tok)
    for text in (SUPPORTED, SUPPORTED + " [", SUPPORTED + " [2", "XML documents are parsed by xml."):
        for top in ("<|im_end|>", "\n", " It", "2", "]"):
            logits = _logits(tok, {top: 9.0})
            expected = plain(tok.encode(text), logits.clone())
            for other in (unbound, no_passages):
                assert torch.equal(other(tok.encode(text), logits.clone()), expected), (text, top)


PIECES = [SUPPORTED, UNSUPPORTED, "XML documents are parsed by xml.", "parsers.expat", " It", " the capital",
          ". ", ".", "\n", " [", "[", "1", "2", "3", "]", "].", " Paris"]
ENDINGS = [[], [SUPPORTED], [SUPPORTED, " ["], [SUPPORTED, " [", "2"], [SUPPORTED, " [", "1"],
           ["XML documents are parsed by xml.parsers.expat.", " ["], [SUPPORTED, "\n", "["]]
TOPS = ["<|im_end|>", "<|endoftext|>", "\n", "\n\n", " It", "pars", "2", "1", "]", "].", " [", "."]


def _sentence_end(tok: TextTokenizer, text: str, top: int) -> bool:
    """The rule, from the decoded text: a stop token, a new line, or whitespace after `.!?`."""
    after = tok.decode([top], skip_special_tokens=False)
    return (top in tok.stop_token_ids or after.startswith("\n")
            or (text.endswith((".", "!", "?")) and after[:1].isspace()))


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.sampled_from(PIECES), max_size=6), ending=st.sampled_from(ENDINGS),
       top=st.sampled_from(TOPS), seed=st.integers(0, 2**16))
@example(pieces=[], ending=[SUPPORTED], top="<|im_end|>", seed=1)
@example(pieces=[], ending=[SUPPORTED, " [", "2"], top="].", seed=2)
@example(pieces=[], ending=[SUPPORTED, " [", "2"], top="3", seed=3)
def test_a_steered_token_is_one_the_plain_constraint_allows(tok: TextTokenizer, steering: CitationConstraint,
                                                            pieces: list[str], ending: list[str], top: str,
                                                            seed: int) -> None:
    """Random outputs (pieces of sentences and markers, often ending as a steered marker begins) and logits."""
    plain = CitationConstraint(tok, PASSAGES)
    generated = [tid for piece in pieces + ending for tid in tok.encode(piece)]
    logits = _logits(tok, {top: 9.0}, seed)
    steered, masked = steering(generated, logits.clone()), plain(generated, logits.clone())
    assert torch.equal(torch.isfinite(steered), torch.isfinite(masked))  # steering never unmasks a token
    chosen = int(steered.argmax())
    if chosen == int(masked.argmax()):
        return
    vocabulary = plain.vocabulary
    assert chosen in vocabulary.openers or chosen in vocabulary.digits or chosen in vocabulary.closers
    if plain.open_marker(generated) is None:  # an opener: only at the end of a supported sentence with no marker
        text = tok.decode(generated, skip_special_tokens=False)
        sentence = re.split(r"(?<=[.!?])\s+|\n+", text)[-1]
        assert _sentence_end(tok, text, int(logits.argmax()))
        assert tok.decode([chosen]) == ("[" if text[-1:].isspace() else " [")
        assert not re.search(r"\[\d{1,3}\]", sentence) and max(support(sentence, p) for p in PASSAGES.values()) >= 0.5
    else:
        assert chosen in plain.allowed(plain.open_marker(generated) or "")


def test_a_bound_constraint_pickles_without_its_tokenizer(tok: TextTokenizer, steering: CitationConstraint) -> None:
    wire = pickle.dumps(steering)
    assert len(wire) < 64 * 1024 and b"TextTokenizer" not in wire and b"tokenizers" not in wire
    copy = pickle.loads(wire)
    generated, logits = tok.encode(SUPPORTED), _logits(tok, {"<|im_end|>": 9.0})
    assert torch.equal(copy(generated, logits.clone()), logits)  # unbound: the plain constraint
    copy.bind(tok)
    assert torch.equal(copy(generated, logits.clone()), steering(generated, logits.clone()))


def _chunk(tok: TextTokenizer, chunk_id: int, text: str) -> Chunk:
    return Chunk(chunk_id, f"d{chunk_id}", "kb", 0, text, tok.encode(text), "Doc", "Doc.md", None, ())


def test_a_marker_only_segment_cites_the_sentence_before_it(tok: TextTokenizer) -> None:
    passages = {n: _chunk(tok, n, text) for n, text in PASSAGES.items()}
    answer = "XML is read by xml.parsers.expat. [1]\nParis is the capital of France. [2]. [1]\nThe moon is cheese. [2]"
    assert sentences(answer) == ["XML is read by xml.parsers.expat. [1]", "Paris is the capital of France. [2]. [1]",
                                 "The moon is cheese. [2]"]
    cites = {(c.n, c.sentence): c.supported for c in check_citations(answer, passages)}
    assert cites == {(1, "XML is read by xml.parsers.expat. [1]"): True,
                     (2, "Paris is the capital of France. [2]. [1]"): True,
                     (1, "Paris is the capital of France. [2]. [1]"): False,
                     (2, "The moon is cheese. [2]"): False}
    assert sentences("[1] Alone first. Then more.") == ["[1] Alone first.", "Then more."]  # nothing before it


def test_markers_after_a_full_stop_cite_that_sentence_when_the_answer_goes_on(tok: TextTokenizer) -> None:
    """A steered marker comes after the full stop; the model may go on on the same line: the marker still cites
    the sentence before it, not the next. A marker opening a new line (list-style) stays with its line."""
    passages = {n: _chunk(tok, n, text) for n, text in PASSAGES.items()}
    answer = "Paris is the capital of France. [2] The moon is cheese.\n[1] XML is read by xml.parsers.expat."
    assert sentences(answer) == ["Paris is the capital of France. [2]", "The moon is cheese.",
                                 "[1] XML is read by xml.parsers.expat."]
    cites = {(c.n, c.sentence): c.supported for c in check_citations(answer, passages) if c.kind == "cited"}
    assert cites == {(2, "Paris is the capital of France. [2]"): True,
                     (1, "[1] XML is read by xml.parsers.expat."): True}


class _RecordsBind:
    """A logits processor that records the tokenizers it was bound to."""

    def __init__(self) -> None:
        self.bound: list[TextTokenizer] = []

    def bind(self, tokenizer: TextTokenizer) -> None:
        self.bound.append(tokenizer)

    def __call__(self, generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        assert self.bound, "a step ran before bind"
        return logits


def test_steering_makes_the_model_cite_a_supporting_passage(tok: TextTokenizer,
                                                            make_engine: Callable[..., LLMEngine]) -> None:
    engine = make_engine()
    chunks = [_chunk(tok, 1, "Paris is the capital of France. It is known for the Eiffel Tower."),
              _chunk(tok, 2, "Berlin is the capital of Germany.")]
    prompt = PromptBuilder(tok).build("What is the capital of France?", chunks)
    texts = {n: c.text for n, c in prompt.numbered().items()}
    recorder = _RecordsBind()
    assert isinstance(recorder, TokenizerAware) and isinstance(CitationConstraint(tok, [1]), TokenizerAware)
    plain, steered = engine.generate([prompt.token_ids] * 2, [
        SamplingParams(max_tokens=24, temperature=0, logits_processors=(CitationConstraint(tok, prompt.numbers),)),
        SamplingParams(max_tokens=24, temperature=0,
                       logits_processors=(recorder, CitationConstraint(tok, prompt.numbers, texts)))])
    assert "[" not in plain.text, plain.text  # without steering, the model does not cite
    cited = [c for c in check_citations(steered.text, prompt.numbered()) if c.kind == "cited"]
    assert cited and all(c.supported for c in cited), steered.text
    assert recorder.bound == [engine.tokenizer]


def test_the_questions_own_words_need_no_support(tok: TextTokenizer) -> None:
    """A sentence restating the question around its answer is judged on the answer: supported when the passage
    holds it, still unsupported when it does not. Steering reads support the same way."""
    question = "Which standard library module should I use to read XML files?"
    restated = "The standard library module to read XML files is expat."
    wrong = "The standard library module to read XML files is lxml."
    given = frozenset({"standard", "library", "module", "use", "read", "xml", "files"})
    assert support(restated, PASSAGES[1]) < 0.5 and support(restated, PASSAGES[1], given) == 1.0
    assert support(wrong, PASSAGES[1], given) == 0.0
    passages = {n: _chunk(tok, n, text) for n, text in PASSAGES.items()}
    cites = {c.sentence: c.supported for c in check_citations(f"{restated} [1] {wrong} [1]", passages,
                                                              question=question)}
    assert cites == {f"{restated} [1]": True, f"{wrong} [1]": False}
    assert not check_citations(f"{restated} [1]", passages)[0].supported  # without the question: not supported
    for asked, steered in ((question, True), ("", False)):
        constraint = CitationConstraint(tok, PASSAGES, PASSAGES, question=asked)
        constraint.bind(tok)
        logits = _logits(tok, {"<|im_end|>": 9.0})
        assert (_best(tok, constraint(tok.encode(restated), logits)) == " [") is steered
