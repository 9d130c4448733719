"""Compiled decode layers (appliance/engine/compiled_decode.py): the same greedy outputs as the eager layers on
the real model, in float32 (dense weights) and bfloat16 (the 4-bit decode path serving uses), each against
itself; built once for every layer and batch size, on a thread of their own while the eager path serves."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from appliance.engine.sampling import SamplingParams
from appliance.engine.work import WorkItem

PROMPTS = ["The history of the sea is long and", "def fibonacci(n):\n    ", "Paris is the capital of",
           "A list of the planets: Mercury,"]


def _greedy(engine, prompts: list[list[int]]) -> list[list[int]]:
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    return [out.token_ids for out in engine.generate(prompts, params)]


@pytest.mark.parametrize("dtype,int4_tokens", [("float32", 0), ("bfloat16", 32)])
def test_compiled_decode_gives_the_eager_greedy_outputs(make_engine, dtype: str, int4_tokens: int) -> None:
    eager = make_engine(dtype=dtype, int4_decode_tokens=int4_tokens)
    compiled = make_engine(dtype=dtype, int4_decode_tokens=int4_tokens, compiled_decode=True, fused_decode_rows=0)
    assert eager.runner.compiled is None
    assert compiled.runner.compiled is not None and compiled.runner.compiled.wait(600), compiled.runner.compiled.failed
    prompts = [compiled.tokenizer.encode(p) for p in PROMPTS]
    graphs_before = counters["stats"]["unique_graphs"]
    graphs = compiled.runner.compiled._compiled
    calls = 0

    def counted(*args):  # the graphs' function, counting its calls
        nonlocal calls
        calls += 1
        return graphs(*args)

    compiled.runner.compiled._compiled = counted
    for batch in (prompts[:1], prompts):  # one stream, then four decoding together
        got, want = _greedy(compiled, batch), _greedy(eager, batch)
        if dtype == "float32":
            assert got == want
        else:  # bf16 sums in another order in the fused kernels; on some CPUs (AMX) a near tie then flips
            assert [g[:4] for g in got] == [w[:4] for w in want], (got, want)
            same = sum(a == b for g, w in zip(got, want, strict=True) for a, b in zip(g, w, strict=True))
            assert same >= 0.8 * sum(map(len, want)), (got, want)
    assert calls == 2 * 23 * compiled.model_config.num_layers  # every layer of each run's 23 decode steps, no more
    assert counters["stats"]["unique_graphs"] == graphs_before  # the graphs built in the background served them


def test_only_decode_steps_take_the_compiled_layers(make_engine) -> None:
    from appliance.engine.compiled_decode import is_decode_step

    engine = make_engine()
    request = engine.add_request("r", engine.tokenizer.encode("Hello there"), SamplingParams(max_tokens=2))
    assert not is_decode_step([WorkItem(request, [0, 1, 2])])  # a prefill chunk
    assert not is_decode_step([WorkItem(request, [0])])  # a one-token prompt: nothing cached before it
    assert is_decode_step([WorkItem(request, [5])])
    assert not is_decode_step([WorkItem(request, [5], first_layer=2)])  # a document-cache phase
    assert not is_decode_step([WorkItem(request, [5]), WorkItem(request, [6, 7])])


def test_a_compiler_that_fails_leaves_decode_eager(make_engine) -> None:
    from appliance.engine.compiled_decode import CompiledDecode

    def no_compiler(graph, example_inputs):
        raise RuntimeError("no C++ compiler found")

    engine = make_engine()
    torch._dynamo.reset()  # graphs an earlier test built for the same function would serve without compiling
    compiled = CompiledDecode(engine.model, engine.backend, engine.config.block_size, engine.config.data_dir,
                              compiler=no_compiler)
    compiled.start()
    assert not compiled.wait(600)
    assert "no C++ compiler found" in compiled.failed
    engine.runner.compiled = compiled
    assert len(_greedy(engine, [engine.tokenizer.encode(PROMPTS[0])])[0]) == 24  # served eagerly
