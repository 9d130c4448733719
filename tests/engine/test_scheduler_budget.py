"""A step's token budget: requests that decode always get their token, whatever prompt work comes before them
in the running order; a plain prompt's chunk takes what they leave of the full budget, held or not (the hold,
`decode_step_tokens`, is for document-cache work: tests/engine/test_doc_cache.py)."""

from __future__ import annotations

from appliance.engine.engine import LLMEngine
from appliance.engine.sampling import SamplingParams
from appliance.engine.scheduler import ScheduledBatch, StepBudget

GREEDY = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)


def _traced(engine: LLMEngine) -> list[dict[str, int]]:
    """Each later step's tokens per request id."""
    steps: list[dict[str, int]] = []
    schedule = engine.scheduler.schedule

    def traced() -> ScheduledBatch:
        batch = schedule()
        steps.append({item.request.request_id: item.num_tokens for item in batch.items})
        return batch

    engine.scheduler.schedule = traced  # type: ignore[method-assign]
    return steps


def _long_prompt(engine: LLMEngine) -> list[int]:
    ids = engine.tokenizer.encode(" ".join(f"word{i}" for i in range(80)))
    assert len(ids) > 100
    return ids


def test_a_prompt_ahead_of_decoding_requests_leaves_them_their_tokens(make_engine) -> None:
    """Running requests are served in order; a prompt ahead of a decoding request (as a document-cache request
    admitted before it is, whose phases span many steps) takes the budget less the decode tokens behind it."""
    engine = make_engine(max_num_batched_tokens=16)
    engine.add_request("stream", engine.tokenizer.encode("Count to a hundred:"), GREEDY)
    while not engine.scheduler.running or engine.scheduler.running[0].num_output_tokens == 0:
        engine.step()
    engine.add_request("long", _long_prompt(engine), SamplingParams(max_tokens=1, temperature=0.0))
    engine.step()  # admitted behind the stream
    engine.scheduler.running.reverse()  # now ahead of it
    steps = _traced(engine)
    for _ in range(3):
        engine.step()
    assert steps == [{"long": 15, "stream": 1}] * 3


def test_a_plain_prompt_is_not_held_while_requests_decode(make_engine) -> None:
    engine = make_engine(max_num_batched_tokens=64, decode_step_tokens=12)
    engine.add_request("stream", engine.tokenizer.encode("Count to a hundred:"), GREEDY)
    while not engine.scheduler.running or engine.scheduler.running[0].num_output_tokens == 0:
        engine.step()
    steps = _traced(engine)
    engine.add_request("long", _long_prompt(engine), SamplingParams(max_tokens=1, temperature=0.0))
    engine.step()
    assert steps == [{"stream": 1, "long": 63}]


def test_the_hold_leaves_document_cache_work_a_minimum() -> None:
    """The decode tokens and document-cache work share the hold; with more decode tokens than the hold, that work
    still gets MIN_HELD; nothing is held without decode tokens or a hold; a decode token is never refused."""
    assert StepBudget.start(tokens=64, decodes=3, hold=12).held == 9
    assert StepBudget.start(tokens=64, decodes=0, hold=12).held is None
    assert StepBudget.start(tokens=64, decodes=3, hold=0).held is None
    budget = StepBudget.start(tokens=64, decodes=30, hold=12)
    assert budget.allowance(decoding=False, cached=True) == StepBudget.MIN_HELD
    assert budget.allowance(decoding=False, cached=False) == 34
    budget.spend(StepBudget.MIN_HELD, decoding=False, cached=True)
    assert budget.allowance(decoding=False, cached=True) == 0
    assert budget.allowance(decoding=True, cached=False) == 56
