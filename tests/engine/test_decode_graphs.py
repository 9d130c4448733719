"""Decode graphs: the static-buffer decode path against the eager torch path on the real model.

Without CUDA the path runs uncaptured (`decode_graphs="eager"`) with the triton kernel under its interpreter;
this checks what could go wrong on our side — padding to a captured size, rows left over from a larger step,
the scratch block, buffer copies. With CUDA, the `gpu` test replays captured graphs against eager steps.
"""

from __future__ import annotations

import random

import pytest
import torch

pytest.importorskip("triton")  # without CUDA, tests/conftest.py has set TRITON_INTERPRET=1

from appliance.engine.decode_graphs import decode_graph_mode, graph_batch_sizes  # noqa: E402
from appliance.engine.sampling import SamplingParams  # noqa: E402
from kernels.base import AttentionBatch, get_backend  # noqa: E402
from tests.kernels.paged import pad_block_tables  # noqa: E402

NUM_BLOCKS, BLOCK_SIZE = 24, 16


@pytest.mark.parametrize("setting, device, backend, triton, expected", [
    ("auto", "cuda", "auto", True, "capture"),  # flashinfer (or triton) for prefill, triton graphs for decode
    ("auto", "cuda", "triton", True, "capture"),
    ("auto", "cuda", "flashinfer", True, "off"),  # a backend named explicitly is followed for every step
    ("auto", "cuda", "torch", True, "off"),
    ("auto", "cuda", "auto", False, "off"),
    ("auto", "cpu", "auto", True, "off"),
    ("off", "cuda", "auto", True, "off"),
    ("eager", "cpu", "torch", True, "eager"),
])
def test_decode_graphs_follow_the_backend_asked_for(setting: str, device: str, backend: str, triton: bool,
                                                    expected: str) -> None:
    assert decode_graph_mode(setting, device, backend, triton) == expected


def test_captured_sizes_cover_every_batch() -> None:
    assert graph_batch_sizes(5) == [1, 2, 4, 5]
    assert graph_batch_sizes(40) == [1, 2, 4, 8, 16, 32, 40]
    for max_batch in (1, 3, 16, 33):
        sizes = graph_batch_sizes(max_batch)
        assert all(any(s >= n for s in sizes) for n in range(1, max_batch + 1)) and max(sizes) == max_batch


def decode_batch(positions: list[int], rng: random.Random, device: torch.device) -> AttentionBatch:
    """One decode token per sequence at `positions`, each sequence on its own shuffled blocks."""
    free = list(range(NUM_BLOCKS))
    rng.shuffle(free)
    tables = [[free.pop() for _ in range(p // BLOCK_SIZE + 1)] for p in positions]
    slots = [t[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for t, p in zip(tables, positions, strict=True)]
    return AttentionBatch(list(range(len(positions) + 1)), [p + 1 for p in positions],
                          torch.tensor(positions, device=device), torch.tensor(slots, device=device),
                          pad_block_tables(tables).to(device), BLOCK_SIZE)


def relative_error(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """|x - ref| / |ref| over the last dimension."""
    return (x.float() - reference.float()).norm(dim=-1) / reference.float().norm(dim=-1)


@pytest.mark.parametrize("capture", [False, pytest.param(True, marks=pytest.mark.gpu)])
def test_graph_steps_match_eager_steps_and_keep_padding_out_of_real_blocks(make_engine, capture: bool) -> None:
    device = torch.device("cuda" if capture else "cpu")
    engine = make_engine(device=device.type, attention_backend="torch", kv_blocks=NUM_BLOCKS, max_num_seqs=5,
                         decode_graphs="capture" if capture else "eager")
    graphs, model = engine.runner.graphs, engine.model
    assert graphs is not None and sorted(graphs.graphs) == (graph_batch_sizes(5) if capture else [])
    caches = engine.runner.kv_caches
    assert all(k.shape[0] == NUM_BLOCKS + 1 for k, _ in caches)  # the scratch block
    gen, rng = torch.Generator().manual_seed(0), random.Random(0)
    torch_backend = get_backend("torch", device)
    # a step of 4 sequences, then one of 3: row 3 of the buffers must be padding again, not the old sequence
    for positions in ([37, 3, 60, 17], [21, 0, 44]):
        for k, v in caches:  # fresh contents: a stale row would write values unlike the old ones
            k.copy_(torch.randn(k.shape, generator=gen).to(k))
            v.copy_(torch.randn(v.shape, generator=gen).to(v))
        batch = decode_batch(positions, rng, device)
        ids = torch.randint(0, engine.model_config.vocab_size, (len(positions),), generator=gen).to(device)
        reference = [(k.clone(), v.clone()) for k, v in caches]
        before = [(k.clone(), v.clone()) for k, v in caches]
        expected = model.forward(ids, batch.positions, reference, torch_backend, torch_backend.plan(batch))
        assert graphs.fits(batch)
        hidden = graphs.run(batch, ids)
        # float32 through 30 layers over random KV (triton vs torch sums): ~1e-4; a wrong key or slot: ~1
        assert relative_error(hidden, expected).max() < 1e-3
        written = torch.zeros((NUM_BLOCKS + 1) * BLOCK_SIZE, dtype=torch.bool, device=device)
        written[batch.slot_mapping] = True
        real = torch.arange(written.numel(), device=device) < NUM_BLOCKS * BLOCK_SIZE
        for (k, v), (ref_k, ref_v), (old_k, old_v) in zip(caches, reference, before, strict=True):
            for new, ref, old in ((k, ref_k, old_k), (v, ref_v, old_v)):
                new, ref, old = (x.flatten(0, 1) for x in (new, ref, old))  # [slots, KVH, D]
                assert torch.equal(new[real & ~written], old[real & ~written])  # padding wrote nowhere real
                assert relative_error(new[written], ref[written]).max() < 1e-3
    prefill = AttentionBatch([0, 2], [2], torch.tensor([0, 1]), torch.tensor([0, 1]), torch.zeros(1, 1), BLOCK_SIZE)
    assert not graphs.fits(prefill)


def test_engine_with_decode_graphs_generates_what_the_eager_engine_does(make_engine) -> None:
    prompts = [[1, 9690, 198, 504, 3458, 282], [1, 4093, 314, 253, 1345], [1, 378, 3767, 282, 4649, 30, 216]]
    params = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)
    outputs = []
    for mode in ("off", "eager"):
        engine = make_engine(attention_backend="torch", max_num_seqs=4, decode_graphs=mode)
        for i, prompt in enumerate(prompts):
            engine.add_request(str(i), prompt, params)
        tokens: dict[str, list[int]] = {str(i): [] for i in range(len(prompts))}
        while engine.has_unfinished():
            for out in engine.step():
                tokens[out.request_id].extend(out.token_ids)
        outputs.append(tokens)
    assert outputs[0] == outputs[1] and all(len(t) == 5 for t in outputs[0].values())
