"""What a conversation turn carries into its prompt: the recent turns within a token budget, and the numbers
of the passages it shows (conversation-wide: a passage keeps its number in every turn)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from appliance.engine.tokenizer import TextTokenizer
from appliance.rag.prompt import HistoryTurn, PromptBuilder
from retrieval.types import Chunk


@dataclass(frozen=True)
class History:
    """A conversation so far, as a new turn needs it. `numbers` maps the chunk id of every passage the
    conversation has shown to its number (also those of turns no longer in the prompt, or whose document is
    gone: a number is never given to another passage); `budget` is how many prompt tokens the earlier turns
    may take (the oldest are dropped first)."""

    turns: tuple[HistoryTurn, ...] = ()  # oldest first
    numbers: Mapping[int, int] = field(default_factory=dict)
    budget: int = 0


def text_history(turns: Sequence[tuple[str, str]], tokenizer: TextTokenizer, budget: int) -> History:
    """Earlier turns known by their text only, (question, answer) oldest first (a chat request's messages):
    they show no passages, and the answers are encoded as text."""
    return History(tuple(HistoryTurn((), q, a, tuple(tokenizer.encode(a))) for q, a in turns), {}, budget)


def recent_turns(builder: PromptBuilder, turns: Sequence[HistoryTurn], budget: int) -> list[HistoryTurn]:
    """The earlier turns a prompt carries, oldest first: the newest of `turns` within `budget` tokens.

    The window's start moves only when the turns since it no longer fit, and then far enough for them to fit in
    half the budget (or, when the newest alone takes more, to it): the next turns extend the same prompt, which
    the prefix cache holds, instead of each dropping one turn and so recomputing everything after it. Replayed
    from the first turn, so each turn gets the window its predecessor had, plus itself, until the next move.
    """
    costs = [builder.turn_cost(turn) for turn in turns]
    start, total = 0, 0
    for newest, cost in enumerate(costs):
        total += cost
        if total <= budget:
            continue
        while start < newest and total > budget // 2:
            total -= costs[start]
            start += 1
        if total > budget:  # the newest alone does not fit
            start, total = newest + 1, 0
    return list(turns[start:])


def number_passages(arranged: Sequence[Chunk], numbers: Mapping[int, int]) -> list[tuple[int, Chunk]]:
    """`arranged` (in prompt order) numbered, by number: a passage keeps the number the conversation gave it; a
    new one gets the next free number (new passages numbered in prompt order)."""
    next_number = max(numbers.values(), default=0) + 1
    numbered: dict[int, int] = {}
    for chunk in arranged:
        if chunk.chunk_id in numbers:
            numbered[chunk.chunk_id] = numbers[chunk.chunk_id]
        else:
            numbered[chunk.chunk_id] = next_number
            next_number += 1
    return sorted(((numbered[c.chunk_id], c) for c in arranged), key=lambda nc: nc[0])


def not_shown(numbered: Sequence[tuple[int, Chunk]], shown: Sequence[HistoryTurn]) -> list[tuple[int, Chunk]]:
    """The passages of `numbered` that no turn in `shown` put in the prompt (what it must add), by number (the
    prompt order `number_passages` gave them)."""
    visible = {chunk.chunk_id for turn in shown for _, chunk in turn.passages}
    return sorted(((n, c) for n, c in numbered if c.chunk_id not in visible), key=lambda nc: nc[0])
