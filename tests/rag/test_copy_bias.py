"""The bias toward the passages' tokens (`PassageCopyBias`): exactly those tokens and the stop tokens move, by the
bias, and the processor crosses a process boundary without its device index."""

from __future__ import annotations

import pickle

import pytest
import torch

from appliance.rag.copy_bias import PassageCopyBias


def test_only_passage_and_stop_tokens_are_raised_by_the_bias() -> None:
    logits = torch.linspace(-2.0, 2.0, 12)  # [V=12]
    before = logits.clone()
    out = PassageCopyBias([[3, 5, 5], [7]], 1.5, also=[11])([1, 2], logits)
    raised = {3, 5, 7, 11}
    assert (out - logits).tolist() == pytest.approx([1.5 if t in raised else 0.0 for t in range(12)])
    assert torch.equal(logits, before)  # the input is left as it was


def test_a_made_up_name_loses_to_the_passages_own() -> None:
    # next-token logits where an invented name (id 9) narrowly beats the passage's module name (id 4)
    logits = torch.zeros(10)
    logits[9], logits[4] = 3.0, 2.5
    assert int(PassageCopyBias([[4, 6]], 1.0)([], logits).argmax()) == 4


def test_ids_past_the_vocabulary_are_ignored_and_pickles_carry_no_tensor() -> None:
    bias = PassageCopyBias([[1, 50]], 2.0)
    bias([], torch.zeros(8))
    restored = pickle.loads(pickle.dumps(bias))
    assert restored._index is None and restored.token_ids == [1, 50]
    assert restored([], torch.zeros(8)).tolist() == [0.0, 2.0, 0, 0, 0, 0, 0, 0]
