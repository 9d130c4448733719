"""Every tensor of an engine step lives on the model's device, checked without a GPU.

The meta device stands in for CUDA: its tensors carry shapes and dtypes but no data, and an op that mixes a
CPU tensor into them raises just as it would on a GPU ("Tensor on device cpu is not on the expected device").
A step's device work (`ModelRunner.compute`: inputs, attention plans, the forward pass, the sampler with
seeded and unseeded draws) runs here in full; only the final copy of the token ids to the host cannot.
"""

from __future__ import annotations

import pytest
import torch

from appliance.engine.model import CausalLM
from appliance.engine.request import Request
from appliance.engine.runner import ModelRunner
from appliance.engine.sampling import SamplingParams
from appliance.engine.work import WorkItem
from appliance.rag.citations import CitationConstraint
from kernels.torch_ref import TorchAttention

META = torch.device("meta")


def _request(rid: str, length: int, params: SamplingParams, first_block: int) -> Request:
    req = Request(rid, list(range(1, length + 1)), params)
    req.block_table = list(range(first_block, first_block + length // 16 + 2))
    return req


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_a_step_keeps_every_tensor_on_the_model_device(loaded_model, dtype: torch.dtype) -> None:
    model = CausalLM(loaded_model.config, loaded_model.weights, dtype, META)
    runner = ModelRunner(model, TorchAttention(), num_blocks=64, block_size=16)
    # past one attention block in bf16; its log-probabilities (and its prompt's) on the device too
    long_greedy = _request("a", 300, SamplingParams(temperature=0.0, logprobs=3, prompt_logprobs=2), 0)
    tokenizer = loaded_model.tokenizer
    citing = CitationConstraint(tokenizer, range(1, 4))  # masks the logits where an answer opens a citation marker
    # top-k beside top-p: a top-p row without one asks the device whether 1024 candidates hold top_p (no data here)
    params = SamplingParams(temperature=0.8, top_k=40, top_p=0.9, seed=3, logits_processors=(citing,))
    seeded = _request("b", 40, params, 25)
    unseeded = _request("c", 40, SamplingParams(temperature=0.7, top_k=5), 30)
    items = [WorkItem(long_greedy, list(range(300)), samples=True), WorkItem(seeded, list(range(40)), samples=True),
             WorkItem(unseeded, list(range(24)))]
    if dtype == torch.float32:  # a prompt's second chunk (its mask over cached keys); bf16 reads the mask's data
        runner.compute([items.pop()])
        items.append(WorkItem(unseeded, list(range(24, 40)), samples=True))
    sampled = runner.compute(items)
    assert sampled.tokens.device == META and sampled.tokens.shape == (sum(item.samples for item in items),)
    assert sampled.logprobs is not None and sampled.logprobs.device == META and sampled.logprobs.shape == (1, 4)
    values, ids = sampled.prompt_logprobs[0]  # the greedy request scores its prompt's positions 1..299
    assert values.device == ids.device == META and values.shape == (299, 3)
    for req in (long_greedy, unseeded):
        req.token_ids.append(7)
    seeded.token_ids.extend(tokenizer.encode("It is new in 3.11 ["))
    assert citing.open_marker(seeded.output_token_ids) is not None  # the constraint acts
    decode = [WorkItem(req, [req.num_tokens - 1], samples=True) for req in (long_greedy, seeded, unseeded)]
    tokens = runner.compute(decode).tokens
    assert tokens.device == META and tokens.shape == (3,)
