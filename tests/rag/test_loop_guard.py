"""The loop guard (`LoopGuard`): a third copy in a row of a short block cannot start, runs of one token and
blocks longer than its reach are left alone, and a constraint's only allowed token is never taken away."""

from __future__ import annotations

import pickle

import torch

from appliance.rag.loop_guard import LoopGuard


def test_the_token_starting_a_third_copy_is_banned() -> None:
    guard = LoopGuard()
    assert guard.banned([9, 4, 7, 4, 7]) == {4}  # ". filecmp . filecmp" -> no third "filecmp"
    assert guard.banned([1, 5, 6, 8, 5, 6, 8]) == {5}
    assert guard.banned([4, 7, 4, 7, 2]) == set()  # the loop was left: nothing to ban
    assert guard.banned([1, 2, 3, 4]) == set() and guard.banned([]) == set()


def test_runs_of_one_token_and_blocks_past_the_reach_are_left_alone() -> None:
    assert LoopGuard().banned([1, 0, 0, 0, 0, 0, 0]) == set()  # 1000000: digits are tokens of their own
    long_block = list(range(10, 19))  # 9 tokens, twice
    assert LoopGuard(longest=8).banned(long_block * 2) == set()
    assert LoopGuard(longest=9).banned(long_block * 2) == {10}


def test_the_banned_logit_is_minus_infinity_and_the_input_is_kept() -> None:
    logits = torch.arange(10, dtype=torch.float32)  # [V=10]
    out = LoopGuard()([3, 9, 3, 9], logits)
    assert out[3] == float("-inf") and int(out.argmax()) == 9
    assert torch.equal(logits, torch.arange(10, dtype=torch.float32))
    assert LoopGuard()([1, 2, 3], logits) is logits  # nothing banned: no copy made


def test_a_constraints_only_allowed_token_stays() -> None:
    masked = torch.full((6,), float("-inf"))
    masked[3] = 0.0  # a constraint allows token 3 alone
    assert torch.equal(LoopGuard()([3, 5, 3, 5], masked), masked)


def test_the_guard_crosses_a_process_boundary() -> None:
    guard = pickle.loads(pickle.dumps(LoopGuard(3, 6)))
    assert (guard.shortest, guard.longest) == (3, 6) and guard.banned([1, 2, 3, 1, 2, 3]) == {1}
