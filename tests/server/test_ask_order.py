"""The ask pipeline's decoding options through the real engine and retrieval service (`answering.py`): passage
order, the copy bias, the loop guard."""

from __future__ import annotations

import asyncio

from appliance.rag.answering import AnswerOptions


def test_the_pipeline_shows_the_same_passages_in_either_order(make_engine, loaded_model, rag_data_dir) -> None:
    """Through the real pipeline: the same retrieved passages, numbered in prompt order; relevance order puts the
    top hit last."""
    from appliance.engine.async_engine import AsyncEngine
    from appliance.engine.sampling import SamplingParams
    from appliance.rag.pipeline import AskPipeline, answered
    from retrieval.service import RetrievalService

    service = RetrievalService.open(rag_data_dir, loaded_model.tokenizer, chunk_tokens=128)
    engine = AsyncEngine(make_engine())
    question = "How tall is Olympus Mons?"
    try:
        top = service.search_phrasings([question], ["space"], 3)
        shown = {}
        for order in ("canonical", "relevance"):
            pipeline = AskPipeline(engine, service, options=AnswerOptions(passage_order=order, evidence=0))
            got = asyncio.run(answered(pipeline.ask(question, ["space"], 3, SamplingParams(max_tokens=4))))
            assert got.sources.numbers == (1, 2, 3) and got.evidence == []
            shown[order] = [c.chunk_id for c in got.sources.passages]
    finally:
        engine.close()
        service.close()
    assert sorted(shown["canonical"]) == sorted(shown["relevance"]) == sorted(h.chunk.chunk_id for h in top)
    assert shown["canonical"] == sorted(shown["canonical"])
    assert shown["relevance"] == [h.chunk.chunk_id for h in top][::-1]


def test_a_strong_copy_bias_answers_in_the_passages_own_tokens(make_engine, loaded_model, rag_data_dir) -> None:
    """Through the real pipeline, greedy: at the largest bias every answer token is one of the passages' (or a
    citation marker's, or a stop token); without it the model says things in words of its own."""
    from appliance.engine.async_engine import AsyncEngine
    from appliance.engine.sampling import SamplingParams
    from appliance.rag.citations import marker_vocabulary
    from appliance.rag.pipeline import AskPipeline, answered
    from retrieval.service import RetrievalService

    tokenizer = loaded_model.tokenizer
    vocabulary = marker_vocabulary(tokenizer)
    markers = {*vocabulary.openers, *vocabulary.digits, *vocabulary.closers, *tokenizer.stop_token_ids}
    service = RetrievalService.open(rag_data_dir, tokenizer, chunk_tokens=128)
    engine = AsyncEngine(make_engine())
    outside: dict[float, list[int]] = {0.0: [], 10.0: []}
    try:
        for bias in outside:
            pipeline = AskPipeline(engine, service, options=AnswerOptions(copy_bias=bias, evidence=0))
            for question in ("Which rover explored Mars in 2012?", "Who was the first person to walk on the Moon?"):
                got = asyncio.run(answered(pipeline.ask(question, ["space"], 3,
                                                        SamplingParams(max_tokens=24, temperature=0.0))))
                passages = {t for c in got.sources.passages for t in c.token_ids}
                outside[bias] += [t for t in tokenizer.encode(got.done.answer) if t not in passages | markers]
    finally:
        engine.close()
        service.close()
    assert outside[10.0] == [] and outside[0.0], outside


def test_the_loop_guard_stops_a_third_copy_in_a_row(make_engine, loaded_model, rag_data_dir) -> None:
    """Through the real pipeline, greedy: these questions' answers repeat a sentence and its citation over and
    over without the guard; with it, no answer holds three copies of a block in a row."""
    from appliance.engine.async_engine import AsyncEngine
    from appliance.engine.sampling import SamplingParams
    from appliance.rag.loop_guard import LoopGuard
    from appliance.rag.pipeline import AskPipeline, answered
    from retrieval.service import RetrievalService

    def third_copies(ids: list[int]) -> int:
        return sum(ids[i] in LoopGuard().banned(ids[:i]) for i in range(len(ids)))

    service = RetrievalService.open(rag_data_dir, loaded_model.tokenizer, chunk_tokens=128)
    engine = AsyncEngine(make_engine())
    loops: dict[bool, list[int]] = {False: [], True: []}
    try:
        for guard in loops:
            pipeline = AskPipeline(engine, service, options=AnswerOptions(loop_guard=guard, evidence=0))
            for question in ("Why does sourdough rise?", "What colour is Mars and why?",
                             "How often does the Moon orbit the Earth?"):
                got = asyncio.run(answered(pipeline.ask(question, ["space", "kitchen"], 3,
                                                        SamplingParams(max_tokens=48, temperature=0.0))))
                loops[guard].append(third_copies(list(got.done.answer_token_ids)))
    finally:
        engine.close()
        service.close()
    assert loops[True] == [0, 0, 0] and all(loops[False]), loops
