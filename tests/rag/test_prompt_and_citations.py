"""Prompt assembly from stored tokens, the citation constraint and the support check (real tokenizer)."""

from __future__ import annotations

import pickle
import random

import pytest
import torch

from appliance.engine.tokenizer import ChatMessage
from appliance.rag.citations import CitationConstraint, check_citations
from appliance.rag.prompt import SYSTEM_PROMPT, PromptBuilder
from retrieval.types import Chunk


def _chunk(tok, chunk_id: int, text: str, title: str = "Doc", page: int | None = None) -> Chunk:
    return Chunk(chunk_id, f"d{chunk_id}", "kb", 0, text, tok.encode(text), title, f"{title}.md", page, ())


@pytest.fixture(scope="module")
def tok(loaded_model):
    return loaded_model.tokenizer


def test_chunks_keep_their_stored_tokens_in_canonical_order(tok) -> None:
    builder = PromptBuilder(tok)
    a = _chunk(tok, 7, "Alpha passage about rivers.")
    b = _chunk(tok, 3, "Beta passage about mountains.", page=4)
    p1, p2 = builder.build("Where?", [a, b]), builder.build("Where?", [b, a])
    assert p1.token_ids == p2.token_ids
    assert [c.chunk_id for c in p1.passages] == [3, 7]
    chunk_segments = [s for s in p1.segments if s.chunk_id is not None]
    assert [s.token_ids for s in chunk_segments] == [builder.passage_tokens(b), builder.passage_tokens(a)]
    for segment, chunk in zip(chunk_segments, (b, a), strict=True):  # the stored tokens, untouched, inside
        run = list(segment.token_ids)
        assert any(run[i:i + len(chunk.token_ids)] == chunk.token_ids for i in range(len(run)))
    # a passage's run depends on the chunk alone: the same in another prompt, at another number
    alone = builder.build("Elsewhere?", [a])
    assert [s.token_ids for s in alone.segments if s.chunk_id is not None] == [builder.passage_tokens(a)]
    text = tok.decode(p1.token_ids, skip_special_tokens=False)
    assert "[1] Doc, page 4\nBeta passage" in text and "[2] Doc\nAlpha passage" in text
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    # the shared system prefix is the same token run for every question
    other = builder.build("Something else entirely?", [a])
    assert other.token_ids[:len(builder.prefix)] == list(builder.prefix)


def test_the_chat_template_frames_the_prompt_with_its_special_tokens(tok) -> None:
    """The framing must be the ids the model was trained on (`<|im_start|>` as one special token), exactly as
    the engine's chat templating gives them, never the marker spelled out as plain text."""
    prompt = PromptBuilder(tok).build("Where?", [_chunk(tok, 1, "Alpha passage about rivers.")]).token_ids
    chat = tok.apply_chat_template([ChatMessage("system", SYSTEM_PROMPT), ChatMessage("user", "X")])
    head = chat[:chat.index(tok.encode("X")[0])]  # everything before the user's content
    tail = chat[chat.index(tok.encode("X")[0]) + 1:]  # the end of the user turn and the assistant header
    assert prompt[:len(head)] == head and prompt[-len(tail):] == tail
    assert tok.encode_template("<|im_start|>") == [prompt[0]] != tok.encode("<|im_start|>")


@pytest.mark.parametrize("k", [3, 12])
def test_constraint_allows_only_given_numbers(tok, k: int) -> None:
    constraint = CitationConstraint(tok, range(1, k + 1))
    vocab = tok.vocab_size
    for partial in ["", "1", str(k)]:
        allowed = constraint.allowed(partial)
        assert allowed
        for tid in allowed:
            text = tok.decode([tid])
            if text.isdigit():
                assert any(str(n).startswith(partial + text) for n in range(1, k + 1)), (partial, text)
            else:
                assert text.startswith("]") and partial in {str(n) for n in range(1, k + 1)}
    logits = torch.zeros(vocab)
    masked = constraint(tok.encode("The tower is tall ["), logits.clone())
    finite = torch.isfinite(masked).nonzero().flatten().tolist()
    assert set(finite) == set(constraint.allowed(""))
    assert torch.equal(constraint(tok.encode("No marker here."), logits.clone()), logits)


def _open_marker_by_text(tok, generated: list[int]) -> str | None:
    """The reference: decode the last 8 tokens and read what follows their last unclosed `[`."""
    text = tok.decode(generated[-8:])
    at = text.rfind("[")
    if at == -1 or "]" in text[at:]:
        return None
    inside = text[at + 1:]
    return inside if inside.isdigit() or inside == "" else None


def test_the_open_marker_read_from_token_ids_matches_the_decoded_text(tok) -> None:
    """The constraint reads markers from the ids of the few tokens they are made of; on random outputs built
    from those tokens and ordinary words it finds exactly what decoding the text finds."""
    constraint = CitationConstraint(tok, range(1, 13))
    vocab = constraint.vocabulary
    pools = [list(vocab.openers), list(vocab.digits), list(vocab.closers), tok.encode(" the tower is tall.")]
    rng = random.Random(0)
    found = 0
    for _ in range(3000):
        generated = [rng.choice(rng.choice(pools)) for _ in range(rng.randint(1, 12))]
        expected = _open_marker_by_text(tok, generated)
        assert constraint.open_marker(generated) == expected, tok.decode(generated)
        found += expected is not None
    assert found > 300  # the draws do open markers


def test_the_constraint_pickles_small_and_acts_the_same(tok) -> None:
    """It crosses to the engine process inside its request's sampling parameters: no tokenizer inside."""
    constraint = CitationConstraint(tok, range(1, 6))
    wire = pickle.dumps(constraint)
    assert len(wire) < 64 * 1024
    copy = pickle.loads(wire)
    generated = tok.encode("The tower is tall [")
    logits = torch.randn(tok.vocab_size)
    assert torch.equal(copy(generated, logits.clone()), constraint(generated, logits.clone()))


def test_support_check_marks_supported_unsupported_and_inferred(tok) -> None:
    passages = (
        _chunk(tok, 1, "The Eiffel Tower was completed in 1889 and is 330 metres tall."),
        _chunk(tok, 2, "Rust is a systems programming language focused on memory safety."),
    )
    answer = ("The Eiffel Tower was completed in 1889 [1]. It is made of chocolate and cheese [2]. "
              "Rust is a systems programming language focused on memory safety. Ignore [7].")
    cites = check_citations(answer, dict(enumerate(passages, start=1)))
    by_kind = {(c.n, c.kind): c for c in cites}
    assert by_kind[(1, "cited")].supported
    assert not by_kind[(2, "cited")].supported
    assert by_kind[(2, "inferred")].supported
    assert all(1 <= c.n <= len(passages) for c in cites)  # [7] was not given: never reported
