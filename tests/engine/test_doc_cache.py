"""The document KV cache on the real model (float32): exactness where promised, sharing, accounting."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from appliance.engine.doc_cache.blend import request_slots
from appliance.engine.doc_cache.connector import DocCacheConnector
from appliance.engine.doc_cache.layout import chunk_key
from appliance.engine.doc_cache.manager import BlendConfig
from appliance.engine.engine import LLMEngine
from appliance.engine.model import LayerSpan
from appliance.engine.sampling import SamplingParams
from appliance.rag.prompt import PromptBuilder, RagPrompt
from kernels.base import AttentionBatch
from kernels.rope import apply_rotary
from retrieval.types import Chunk

TEXTS = [
    "The json module encodes Python objects as JSON text. json.dumps returns a string and json.dump writes to a "
    "file object. Keys in JSON objects are always strings, so dictionaries with integer keys come back with "
    "string keys after a round trip.",
    "The pathlib module offers classes for filesystem paths. Path.read_text opens a file, reads it and closes it "
    "again. The / operator joins path segments, and Path.glob yields the paths that match a pattern.",
    "A virtual environment isolates the packages of one project. Create one with python -m venv DIR, then "
    "activate it; pip installs into the active environment only, leaving the system interpreter untouched.",
    "The itertools module provides fast building blocks for iterators. chain joins iterables, islice takes a "
    "slice of an iterator without copying it, and groupby collects consecutive items that share a key.",
]
GREEDY = SamplingParams(max_tokens=16, temperature=0.0)


@pytest.fixture(scope="module")
def passages(loaded_model) -> list[Chunk]:
    tok = loaded_model.tokenizer
    return [Chunk(i + 1, f"doc-{i}", "c", 0, text, tok.encode(text), f"Doc {i}", f"doc{i}.md", None, ())
            for i, text in enumerate(TEXTS)]


@pytest.fixture
def engine_for(make_engine: Callable[..., LLMEngine], tmp_path: Path) -> Callable[..., LLMEngine]:
    def make(**overrides: object) -> LLMEngine:
        return make_engine(data_dir=tmp_path, **overrides)
    return make


def rag(engine: LLMEngine, question: str, chunks: list[Chunk]) -> RagPrompt:
    return PromptBuilder(engine.tokenizer).build(question, chunks)


def span(engine: LLMEngine, *chunks: Chunk) -> int:
    """Tokens the passages take in a prompt (what the chunk tier caches): title line, chunk, blank line."""
    builder = PromptBuilder(engine.tokenizer)
    return sum(len(builder.passage_tokens(c)) for c in chunks)


def warm_passages(engine: LLMEngine, chunks: list[Chunk]) -> None:
    builder = PromptBuilder(engine.tokenizer)
    engine.warm(list(builder.prefix), [(list(builder.passage_tokens(c)), c.doc_id) for c in chunks])
    while engine.has_unfinished():
        engine.step()


def run(engine: LLMEngine, prompt: RagPrompt, mode: str, rid: str, params: SamplingParams = GREEDY):
    engine.add_request(rid, prompt.token_ids, params, prompt.layout(), mode)
    tokens: list[int] = []
    last = None
    while engine.has_unfinished():
        for out in engine.step():
            if out.request_id == rid:
                tokens += out.token_ids
                last = out
    assert last is not None and last.finished
    return tokens, last


def test_exact_is_identical_to_off(engine_for, passages) -> None:
    first = rag(engine_for(), "How do I read a file with pathlib?", passages[:3])
    again = rag(engine_for(), "What does json.dumps return?", passages[:3])
    off, _ = run(engine_for(doc_cache="off"), again, "off", "off")
    engine = engine_for()
    run(engine, first, "exact", "warm")
    exact, out = run(engine, again, "exact", "exact")
    assert out.num_cached_tokens > 0.8 * len(again.token_ids)  # the passages came from the prefix cache
    assert exact == off


def test_blend_recomputing_everything_is_identical_to_off(engine_for, passages) -> None:
    prompt = rag(engine_for(), "Which module joins iterables?", [passages[3], passages[1], passages[0]])
    off, _ = run(engine_for(doc_cache="off"), prompt, "off", "off")
    engine = engine_for(blend_ratio=1.0)
    warm_passages(engine, passages)  # each chunk encoded once, after the system prefix only
    blended, out = run(engine, prompt, "blend", "blend")
    assert out.num_encoded_tokens == 0 and out.num_recomputed_tokens == span(engine, passages[3], *passages[:2])
    assert blended == off


def record_batches(engine: LLMEngine) -> list[list[tuple[str, int, int | None, int]]]:
    """Every step's work items as the runner received them: (request id, first layer, last layer, tokens)."""
    execute, steps = engine.runner.execute, []

    def recorded(items):
        steps.append([(i.request.request_id, i.first_layer, i.last_layer, i.num_tokens) for i in items])
        return execute(items)

    engine.runner.execute = recorded  # type: ignore[method-assign]
    return steps


def test_blend_work_beside_decoding_streams_is_held_to_the_decode_budget(engine_for, passages) -> None:
    """While streams decode, each step's blend work (cost) and decode tokens together stay within
    `decode_step_tokens`, and every stream gets its token every step; the answer is the one an unheld engine
    gives."""
    prompt = rag(engine_for(), "Which module joins iterables?", [passages[3], passages[1], passages[0]])
    answers = {}
    for hold in (0, 12):
        engine = engine_for(max_num_batched_tokens=256, decode_step_tokens=hold)
        warm_passages(engine, passages)
        for i in range(3):
            engine.add_request(f"stream-{i}", engine.tokenizer.encode(f"Count to a hundred, {i}:"),
                               SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True), doc_cache="off")
        while any(r.num_output_tokens == 0 for r in engine.scheduler.running) or engine.num_waiting:
            engine.step()
        steps = record_batches(engine)
        answers[hold], _ = run_until(engine, prompt, "blend", "blend")
        blend_steps = [step for step in steps if any(rid == "blend" for rid, *_ in step)]
        num_layers = engine.model_config.num_layers
        costs = [sum(math.ceil(n * ((num_layers if last is None else last) - first) / num_layers)
                     for rid, first, last, n in step if rid == "blend") for step in blend_steps]
        assert all(sum(1 for rid, *_ in step if rid.startswith("stream-")) == 3 for step in blend_steps)
        if hold:
            assert max(costs) <= hold - 3
        else:
            assert max(costs) > 12  # unheld, a step takes much more of it
    assert answers[12] == answers[0]


def run_until(engine: LLMEngine, prompt: RagPrompt, mode: str, rid: str) -> tuple[list[int], object]:
    """`run`, while other requests keep running: until `rid` has finished."""
    engine.add_request(rid, prompt.token_ids, GREEDY, prompt.layout(), mode)
    tokens: list[int] = []
    while True:
        for out in engine.step():
            if out.request_id == rid:
                tokens += out.token_ids
                if out.finished:
                    return tokens, out


def record_fills(engine: LLMEngine, steps: list, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, range]]:
    """Every write of reused KV, as (the step it came before, its layers), the steps recorded by `record_batches`."""
    mover, fills = engine.runner.connector.mover, []
    fill = mover.fill

    def recorded(backend, block_table, chunks, layers):
        fills.append((len(steps) - 1, layers))
        fill(backend, block_table, chunks, layers)

    monkeypatch.setattr(mover, "fill", recorded)
    return fills


def test_reused_kv_is_written_over_the_first_steps_ahead_of_the_work(engine_for, passages, monkeypatch) -> None:
    """While streams decode, a blend request's reused KV is written a share of the layers a step, each step at
    least the layers its own work runs (never a layer after its work ran there: that would overwrite recomputed
    KV), every layer once; the answer is the one an engine writing every layer at once gives."""
    prompt = rag(engine_for(), "Which module joins iterables?", [passages[3], passages[1], passages[0]])
    answers, spread = {}, DocCacheConnector.FILL_STEPS
    for fill_steps in (1, spread):
        monkeypatch.setattr(DocCacheConnector, "FILL_STEPS", fill_steps)
        engine = engine_for(max_num_batched_tokens=256, decode_step_tokens=12)
        warm_passages(engine, passages)
        engine.add_request("stream", engine.tokenizer.encode("Count to a hundred:"),
                           SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True), doc_cache="off")
        while not engine.step():
            pass  # the stream's prompt, until its first token
        steps = record_batches(engine)
        fills = record_fills(engine, steps, monkeypatch)
        answers[fill_steps], _ = run_until(engine, prompt, "blend", "blend")
        num_layers = engine.model_config.num_layers
        assert [layer for _, layers in fills for layer in layers] == list(range(num_layers))
        needed = [max((num_layers if last is None else last for rid, _, last, _ in step if rid == "blend"), default=0)
                  for step in steps]  # the layers each step's blend work runs
        for i in range(len(steps)):
            assert needed[i] <= max((layers.stop for at, layers in fills if at <= i), default=0)
        share = -(-num_layers // fill_steps)
        assert all(len(layers) <= share or layers.stop == needed[at] for at, layers in fills)
        assert len(fills) > 1 if fill_steps > 1 else len(fills) == 1
    assert answers[spread] == answers[1]


def test_blend_recompute_shares_a_step_with_a_plain_prefill(engine_for, passages) -> None:
    """Blend's recomputed tokens enter past the layers its selection pass ran; in a step shared with a plain
    prefill (which runs every layer) each row must still get its own residual stream, KV and answer."""
    prompt = rag(engine_for(), "Which module joins iterables?", [passages[3], passages[1], passages[0]])
    plain = rag(engine_for(), "What is a virtual environment?", [passages[2]]).token_ids
    off = engine_for(doc_cache="off")
    expected = [run(off, prompt, "off", "ref")[0], off.generate([plain], GREEDY)[0].token_ids]
    engine = engine_for(blend_ratio=1.0, max_num_batched_tokens=64)
    warm_passages(engine, passages)
    steps = record_batches(engine)
    engine.add_request("plain", plain, GREEDY, doc_cache="off")  # runs first: 64 tokens a step
    engine.add_request("blend", prompt.token_ids, GREEDY, prompt.layout(), "blend")
    got: dict[str, list[int]] = {"blend": [], "plain": []}
    while engine.has_unfinished():
        for out in engine.step():
            got[out.request_id] += out.token_ids
    resumed = [any(rid == "blend" and first > 0 and last is None for rid, first, last, _ in step) for step in steps]
    whole = [any(rid == "plain" and (first, last) == (0, None) for rid, first, last, _ in step) for step in steps]
    assert any(r and w for r, w in zip(resumed, whole, strict=True))  # in one step
    assert [got["blend"], got["plain"]] == expected


def test_blend_selection_runs_in_the_same_steps_as_other_requests_decode(engine_for, passages) -> None:
    """A blend request's selection pass (the first layers over its prompt) and its recompute are work items of
    the step, beside the decode tokens of a running stream: the stream never waits out a separate pass."""
    prompt = rag(engine_for(), "Which module joins iterables?", [passages[3], passages[1], passages[0]])
    stream = rag(engine_for(), "What is a virtual environment?", [passages[2]]).token_ids
    engine = engine_for(blend_ratio=0.15)
    warm_passages(engine, passages)
    steps = record_batches(engine)
    engine.add_request("stream", stream, SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True),
                       doc_cache="off")
    while not engine.step():
        pass  # the stream's prompt, until its first token
    engine.add_request("blend", prompt.token_ids, GREEDY, prompt.layout(), "blend")
    decoding = len(steps)
    done = set()
    while "blend" not in done:
        done.update(out.request_id for out in engine.step() if out.finished)
    blend_steps = [step for step in steps[decoding:] if any(rid == "blend" for rid, *_ in step)]
    selection = [(first, last) for step in blend_steps for rid, first, last, _ in step if rid == "blend"
                 and last is not None]
    assert (0, 2) in selection  # the dense selection pass, as a work item
    assert all(("stream", 0, None, 1) in step for step in blend_steps)  # every one of them decoded the stream
    assert len(engine.scheduler.running) == 1  # the stream, still decoding


def blend_choices(engine: LLMEngine, prompt: RagPrompt):
    """Run `prompt` in blend; return what each `plan_compute` call of its fill chose (the carried candidates,
    then the final choice), the answer and the last output."""
    plan_compute, calls = engine.doc_cache.plan_compute, []

    def recorded(*args, **kwargs) -> list[int]:
        planned = plan_compute(*args, **kwargs)
        calls.append(list(planned))  # a copy: the engine consumes the plan as it computes
        return planned

    engine.doc_cache.plan_compute = recorded  # type: ignore[method-assign]
    tokens, out = run(engine, prompt, "blend", "blend")
    return calls, tokens, out


def test_gradual_filtering_carrying_every_token_is_the_dense_pass(engine_for, passages, monkeypatch) -> None:
    """Carrying every position from layer 2 on to the selection layer splits a dense pass in two: the same
    deviations, the same tokens chosen, the same residual stream to resume from, the same answer."""
    prompt = rag(engine_for(), "Which module joins iterables?", [passages[3], passages[1], passages[0]])
    gradual = engine_for(blend_ratio=0.15, blend_candidates=1.0, blend_select_layers=4, blend_select="deviation")
    warm_passages(gradual, passages)
    (carried, chosen), split_answer, _ = blend_choices(gradual, prompt)
    assert carried[0] <= prompt.layout().chunks[0].start
    assert carried == list(range(carried[0], len(prompt.token_ids)))
    monkeypatch.setattr(BlendConfig, "DENSE_LAYERS", 4)  # the selection pass runs all 4 layers densely
    dense = engine_for(blend_ratio=0.15, blend_select_layers=4, blend_select="deviation")
    warm_passages(dense, passages)
    (dense_chosen,), dense_answer, _ = blend_choices(dense, prompt)
    # (this engine found the chunks on disk, so never computed the system prefix: its plan starts at 0)
    in_chunks = {p for s in prompt.layout().chunks for p in range(s.start, s.end)}
    assert set(chosen) & in_chunks == set(dense_chosen) & in_chunks
    assert split_answer == dense_answer


def test_gradual_filtering_chooses_among_the_carried_tokens(engine_for, passages) -> None:
    engine = engine_for(blend_ratio=0.15, blend_candidates=0.3, blend_select_layers=4,
                        blend_select="deviation")
    warm_passages(engine, passages)
    prompt = rag(engine, "Which module joins iterables?", [passages[3], passages[1], passages[0]])
    (carried, chosen), _, out = blend_choices(engine, prompt)
    chunk_tokens = span(engine, passages[3], *passages[:2])
    computed_anyway = len(chosen) - out.num_recomputed_tokens  # the question, passage numbers, ...
    assert set(chosen) <= set(carried)
    assert len(carried) - computed_anyway >= 0.3 * chunk_tokens
    assert 0.15 * chunk_tokens <= out.num_recomputed_tokens <= 0.15 * chunk_tokens + 3 * 4 + 1  # + first tokens


@pytest.mark.parametrize("select", ["query", "mixed"])
def test_query_aware_blend_recomputing_everything_is_identical_to_off(engine_for, passages, select) -> None:
    """Query selection resumes recomputed tokens after the dense layers (mixed: after the selection layer)."""
    prompt = rag(engine_for(), "Which module joins iterables?", [passages[3], passages[1], passages[0]])
    off, _ = run(engine_for(doc_cache="off"), prompt, "off", "off")
    engine = engine_for(blend_ratio=1.0, blend_select=select, blend_query_layer=6)
    warm_passages(engine, passages)
    blended, out = run(engine, prompt, "blend", "blend")
    assert out.num_recomputed_tokens == span(engine, passages[3], *passages[:2])
    assert blended == off


def test_question_relevance_is_the_questions_attention_in_a_full_prefill(engine_for, passages) -> None:
    """With the chunk tier holding each passage's KV as a full prefill of this very prompt computed it, the
    reused KV is the true KV: the question, carried by blend's question phase from layer 2 to layer 5 over it,
    must pay each earlier position the attention it pays it in a full forward pass (computed here one query at
    a time)."""
    reference = engine_for(doc_cache="off")
    prompt = rag(reference, "Which module joins iterables?", passages[:2])
    tokens, layout = prompt.token_ids, prompt.layout()
    question, t = layout.chunks[-1].end, len(prompt.token_ids)
    reference.add_request("r", tokens, SamplingParams(max_tokens=4, temperature=0.0), doc_cache="off")
    reference.step()  # the whole prompt in one step: its blocks now hold the true KV of every layer
    (req,) = reference.scheduler.running
    engine = engine_for(blend_ratio=0.2, blend_select="query", blend_query_layer=5)
    prefix = tokens[:layout.prefix_len]
    for chunk in layout.chunks:
        key = chunk_key(prefix, tokens[chunk.start:chunk.end], engine.block_manager.salt)
        engine.doc_cache.tier.put(reference.connector.mover.extract(req.block_table, chunk, key, frozenset()))
    mover, relevances = engine.connector.mover, []
    measure = mover.question_relevance
    mover.question_relevance = lambda *a: relevances.append(measure(*a)) or relevances[-1]  # type: ignore
    _, out = run(engine, prompt, "blend", "blend")
    assert out.num_encoded_tokens == 0
    (got,) = relevances
    model, backend, positions = reference.model, reference.backend, torch.arange(t)
    slots = request_slots(req.block_table, positions, reference.config.block_size)
    batch = AttentionBatch([0, t], [t], positions, slots, torch.tensor(req.block_table)[None],
                           reference.config.block_size)
    entering_5 = model.run_layers(model.embed_tokens(torch.tensor(tokens)), positions, reference.runner.kv_caches,
                                  backend, [LayerSpan(0, 5, None, backend.plan(batch))])  # rewrites the same KV
    q, k, _ = model.attention_inputs(entering_5, positions, 5)  # [T, H, D], [T, KVH, D]
    group = q.shape[1] // k.shape[1]
    expected = torch.zeros(t)
    for i in range(question, t):
        for h in range(q.shape[1]):
            weights = (k[:i + 1, h // group] @ q[i, h] / q.shape[-1] ** 0.5).softmax(0)  # [i + 1]
            expected[:question] += weights[:question] / ((t - question) * q.shape[1])
    assert float(got[question:].abs().sum()) == 0
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_query_selection_recomputes_what_the_question_attends_to(engine_for, passages) -> None:
    engine = engine_for(blend_ratio=0.2, blend_select="query", blend_query_layer=5)
    warm_passages(engine, passages)
    relevances = []
    measure = engine.connector.mover.question_relevance

    def recorded(*args, **kwargs):
        relevances.append(measure(*args, **kwargs))
        return relevances[-1]

    engine.connector.mover.question_relevance = recorded  # type: ignore[method-assign]
    prompt = rag(engine, "Which module joins iterables?", [passages[3], passages[1], passages[0]])
    (chosen,), _, out = blend_choices(engine, prompt)
    (relevance,) = relevances
    spans = prompt.layout().chunks
    in_chunks = [p for s in spans for p in range(s.start, s.end)]
    first = {p for s in spans for p in range(s.start, s.start + 4)}
    others = [p for p in in_chunks if p not in first]
    extra = math.ceil(0.2 * len(in_chunks))
    top = {others[i] for i in relevance[torch.tensor(others)].topk(extra).indices.tolist()}
    assert set(chosen) & set(in_chunks) == first | top
    assert out.num_recomputed_tokens == len(first | top)


def test_reuse_and_blend_take_chunks_from_the_tier_and_count_it(engine_for, passages) -> None:
    engine = engine_for(blend_ratio=0.15)
    warm = rag(engine, "What is a virtual environment?", passages)
    _, cold = run(engine, warm, "blend", "cold")
    assert cold.num_encoded_tokens == span(engine, *passages)
    exact_hits_before = engine.block_manager.prefix_hits
    prompt = rag(engine, "What does groupby do?", [passages[3], passages[1]])  # not how `warm` began
    chunk_tokens = span(engine, passages[3], passages[1])
    _, blend = run(engine, prompt, "blend", "blend")
    assert blend.num_encoded_tokens == 0
    assert 0.15 * chunk_tokens <= blend.num_recomputed_tokens <= 0.15 * chunk_tokens + 2 * 4 + 1
    assert blend.num_cached_tokens >= chunk_tokens - blend.num_recomputed_tokens
    # only exact KV (system prefix, first passage number) counts as prefix-cache hits, never the blended chunks
    assert engine.block_manager.prefix_hits - exact_hits_before <= prompt.layout().chunks[0].start
    _, reuse = run(engine, prompt, "reuse", "reuse")
    assert reuse.num_recomputed_tokens == 0 and reuse.num_cached_tokens >= chunk_tokens
    assert engine.doc_cache.tier.stats.hits >= 4


def test_a_repeat_of_the_same_passages_reuses_the_blended_blocks(engine_for, passages) -> None:
    """A second question over the same passages takes the first one's blended blocks (recomputing nothing of
    them); with a 100% recompute those blocks are exact KV, so the answer is still off's. They are chained
    under blend's own salt: an `exact` request never takes them, and they never count as exact hits."""
    first = rag(engine_for(), "Which module joins iterables?", passages[:3])
    again = rag(engine_for(), "How do I read a file with pathlib?", passages[:3])
    off, _ = run(engine_for(doc_cache="off"), again, "off", "off")
    engine = engine_for(blend_ratio=1.0)
    warm_passages(engine, passages)
    run(engine, first, "blend", "first")
    exact_hits, bs = engine.block_manager.prefix_hits, engine.config.block_size
    blended, out = run(engine, again, "blend", "again")
    last = again.layout().chunks[-1]
    assert out.num_cached_tokens >= last.end // bs * bs  # every full block through the passages
    assert out.num_recomputed_tokens == 0 and out.num_encoded_tokens == 0
    assert blended == off
    assert engine.block_manager.prefix_hits - exact_hits <= again.layout().chunks[0].start
    assert engine.block_manager.reused_prefix_hits >= last.end // bs * bs - again.layout().chunks[0].start
    _, exact = run(engine, again, "exact", "exact")
    assert exact.num_cached_tokens <= again.layout().chunks[0].start
    reused_hits = engine.block_manager.reused_prefix_hits
    run(engine, again, "reuse", "reuse")  # another mode: its own chain
    assert engine.block_manager.reused_prefix_hits == reused_hits


def test_rerotated_keys_equal_keys_computed_at_the_new_position(engine_for, passages) -> None:
    """RoPE attention only sees relative positions, so the whole `prefix + chunk` computed at positions
    shifted by `d` must give, in every layer, the cached pre-RoPE keys rotated by their new positions."""
    engine = engine_for()
    prefix = list(PromptBuilder(engine.tokenizer).prefix)
    chunk = passages[1].token_ids
    assert engine.warm(prefix, [(chunk, "doc-1")]) == 1
    while engine.has_unfinished():
        engine.step()
    entry = engine.doc_cache.tier.get(chunk_key(prefix, chunk, engine.block_manager.salt))
    assert entry is not None
    shift, tokens = 333, prefix + chunk
    n, bs = len(tokens), engine.config.block_size
    blocks = -(-n // bs)
    like = engine.runner.kv_caches[0][0]
    caches = [(like.new_zeros(blocks, bs, *like.shape[2:]), like.new_zeros(blocks, bs, *like.shape[2:]))
              for _ in engine.runner.kv_caches]
    positions = torch.arange(n) + shift
    batch = AttentionBatch([0, n], [n], positions, torch.arange(n), torch.arange(blocks)[None], bs)
    backend = engine.backend
    # a fresh prefill: the backend sees every key of the sequence, whatever the absolute positions
    model = engine.model
    model.run_layers(model.embed_tokens(torch.tensor(tokens)), positions, caches, backend,
                     [LayerSpan(0, model.config.num_layers, None, backend.plan(batch))])
    cos, sin = engine.connector.mover.rope.tables(torch.arange(len(prefix), n) + shift)
    for layer, (k_direct, v_direct) in enumerate(caches):
        k_direct = k_direct.view(-1, *like.shape[2:])[len(prefix):n]
        v_direct = v_direct.view(-1, *like.shape[2:])[len(prefix):n]
        torch.testing.assert_close(apply_rotary(entry.k[layer], cos, sin), k_direct, atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(entry.v[layer], v_direct, atol=2e-4, rtol=1e-4)


def test_concurrent_requests_sharing_chunks_encode_each_once(engine_for, passages) -> None:
    engine = engine_for()
    sets = [[passages[0], passages[1]], [passages[1], passages[2]], [passages[2], passages[0], passages[1]]]
    prompts = [rag(engine, f"Question number {i}?", s) for i, s in enumerate(sets)]
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", p.token_ids, GREEDY, p.layout(), "blend")
    done = set()
    while engine.has_unfinished():
        done.update(out.request_id for out in engine.step() if out.finished)
    assert done == {"r0", "r1", "r2"}
    assert engine.doc_cache.stats.encoded_chunks == 3
    assert all(e.pins == 0 for e in engine.doc_cache.tier.entries.values())


def test_deleting_a_document_invalidates_its_chunks(engine_for, passages) -> None:
    engine = engine_for()
    prompt = rag(engine, "What does json.dumps return?", passages[:2])
    run(engine, prompt, "reuse", "a")
    assert len(engine.doc_cache.tier) == 2
    assert engine.invalidate_document("doc-0") == 2  # memory and disk
    assert {k for e in engine.doc_cache.tier.entries.values() for k in e.doc_ids} == {"doc-1"}
    _, again = run(engine, prompt, "reuse", "b")
    assert again.num_encoded_tokens == span(engine, passages[0])


def test_a_chunk_is_found_on_disk_by_a_new_engine(engine_for, passages) -> None:
    prompt = rag(engine_for(), "How do I create a virtual environment?", passages[2:])
    run(engine_for(), prompt, "reuse", "first")
    _, out = run(engine_for(), prompt, "reuse", "second")  # a new engine: empty memory tier, same data dir
    assert out.num_encoded_tokens == 0
    assert request_slots([3, 1], torch.tensor([0, 17, 31]), 16).tolist() == [48, 17, 31]
