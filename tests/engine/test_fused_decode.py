"""The fused CPU decode layer (kernels/cpu_decode, appliance/engine/fused_decode.py): its 4-bit and 8-bit
matmuls against the dequantized weights, on this CPU's instructions and on the portable loop; one layer against
the eager layer on the real model; the model's next-token predictions kept (teacher-forced, against the float32
reference); which steps take it; and a build that fails leaving decode to the other paths."""

from __future__ import annotations

import platform
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from appliance.engine.model import LayerSpan
from appliance.engine.sampling import SamplingParams
from kernels.base import AttentionBatch
from kernels.cpu_decode import build, tile_q4, tile_q8

X86_64 = platform.machine() in ("x86_64", "AMD64")  # where the portable build (x86-64-v2) exists


@pytest.fixture(scope="module")
def builds(model_cache_dir: Path) -> dict[str, object]:
    """The extension for this CPU and the portable one (x86-64 only), built once into the tests' data dir: side
    by side, each compiler on a core of its own (~30 s each)."""
    kinds = {"native": False, **({"portable": True} if X86_64 else {})}
    with ThreadPoolExecutor(len(kinds)) as pool:
        built = {name: pool.submit(build, model_cache_dir / "compiled", portable) for name, portable in kinds.items()}
        return {name: future.result() for name, future in built.items()}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("rows", [1, 5, 8, 11])  # one row, a partial and a full block of 8, a block and a remainder
def test_4bit_and_8bit_matmuls_follow_the_dequantized_weights(builds, rows: int) -> None:
    gen = torch.Generator().manual_seed(rows)
    n, k = 48, 96
    q = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=gen)
    d = torch.rand(n, k // 32, generator=gen) * 0.02
    m = -8 * d + torch.randn(n, k // 32, generator=gen) * 1e-3
    dense4 = (q.view(n, k // 32, 32).float() * d[..., None] + m[..., None]).view(n, k)
    dense8 = torch.randn(n, k, generator=gen) * 0.05
    x = torch.randn(rows, k, generator=gen)
    results = {}
    for name, ext in builds.items():
        y4 = ext.q4_matmul(ext.Q4Linear(*tile_q4(q, d, m)), x)  # type: ignore[attr-defined]
        y8 = ext.q8_matmul(ext.Q8Linear(*tile_q8(dense8)), x)  # type: ignore[attr-defined]
        # activations rounded to 8 bits per group of 32 cost well under 2% of the output
        assert _rel(y4, x @ dense4.T) < 0.02, name
        assert _rel(y8, x @ dense8.T) < 0.02, name
        results[name] = (y4, y8)
    if "portable" in results:  # the same integer dot products, summed in another order
        for fast, slow in zip(results["native"], results["portable"], strict=True):
            torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


def test_tiles_refuse_shapes_the_kernel_cannot_read() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        tile_q4(torch.zeros(20, 32, dtype=torch.uint8), torch.zeros(20, 1), torch.zeros(20, 1))
    with pytest.raises(ValueError, match="multiple of 16"):
        tile_q8(torch.zeros(16, 40))


def test_8bit_tiles_keep_q8_0_weights_exactly() -> None:
    gen = torch.Generator().manual_seed(0)
    d = torch.rand(32, 2, generator=gen) * 0.01
    q = torch.randint(-127, 128, (32, 64), generator=gen).float()
    q[:, 0], q[:, 32] = 127, -127  # Q8_0 puts the group's largest magnitude at 127
    weight = (q.view(32, 2, 32) * d[..., None]).view(32, 64)
    packed, dt, _ = tile_q8(weight)
    # back from the tiled layout: [tiles, group, chunk, row, 4 inputs] -> [row, input]
    codes = packed.view(2, 2, 8, 16, 4).permute(0, 3, 1, 2, 4).reshape(32, 64).float()
    scales = dt.transpose(1, 2).reshape(32, 2)
    torch.testing.assert_close(codes, q, rtol=0, atol=0)
    torch.testing.assert_close(scales, d, rtol=1e-6, atol=0)


def _with_fused(engine, cache_dir: Path, **options):
    """`engine` (4-bit decode path) with a fused layer of its own attached, built into `cache_dir`."""
    from appliance.engine.fused_decode import FusedDecode
    from appliance.engine.loader import load_model
    from appliance.engine.model import head_weights

    loaded = load_model("default", engine.config.data_dir)
    engine.runner.fused = FusedDecode(engine.model, loaded.int4, head_weights(loaded.config, loaded.weights),
                                      cache_dir, **options)
    engine.runner.fused.start()
    return engine.runner.fused


def _batch(engine, ids_len: int, positions: torch.Tensor) -> AttentionBatch:
    """One sequence of `ids_len` tokens in blocks 0, 1, ... of the engine's cache (no request holds them in these
    tests), computing `positions` this step."""
    block = engine.config.block_size
    tables = torch.arange(-(-ids_len // block)).view(1, -1)
    return AttentionBatch([0, len(positions)], [ids_len], positions, positions.clone(), tables, block)


def _teacher_forced_logits(engine, ids: list[int], fused: bool, start: int, rows: int = 1) -> torch.Tensor:
    """Logits predicting ids[t + 1] for t >= start - 1: a prefill of ids[:start], then steps of `rows` tokens each
    (one: decode steps; more: a prompt's chunks, each row seeing the rows before it in its step), each through
    the fused layer and head (`fused`) or the engine's eager ones. -> [len(ids) - start, V]."""
    model, caches, backend = engine.model, engine.runner.kv_caches, engine.backend
    out = []
    with torch.inference_mode():
        batch = _batch(engine, start, torch.arange(start))
        x = model.run_layers(model.embed_tokens(torch.tensor(ids[:start])), batch.positions, caches, backend,
                             [LayerSpan(0, model.config.num_layers, None, backend.plan(batch))])
        out.append(model.logits(model.final_norm(x[-1:])))
        for t in range(start, len(ids) - 1, rows):
            positions = torch.arange(t, min(t + rows, len(ids) - 1))
            batch = _batch(engine, int(positions[-1]) + 1, positions)
            layers = model.config.num_layers
            span = LayerSpan(0, layers, None, engine.runner.fused.plan(batch), engine.runner.fused) if fused \
                else LayerSpan(0, layers, None, backend.plan(batch))
            x = model.run_layers(model.embed_tokens(torch.tensor(ids[t:t + len(positions)])), batch.positions,
                                 caches, backend, [span])
            hidden = model.final_norm(x)
            out.append(engine.runner.fused.logits(hidden) if fused else model.logits(hidden))
    return torch.cat(out)


def _assert_predictions_kept(make_engine, ids: list[int], start: int, portable: bool, rows: int = 1) -> None:
    """The fused path's loss and top-1 agreement with the float32 dense reference, teacher-forced over ids[start:]
    in steps of `rows` tokens, are as good as the eager 4-bit path's through torch's kernel (the one it
    replaces), within a small margin; so are the eager layers' once the fused matmul is lent to them."""
    reference = make_engine()  # float32, dense weights
    fused = make_engine(dtype="bfloat16", int4_decode_tokens=32)
    assert _with_fused(fused, fused.config.data_dir / "compiled", portable=portable).wait(600)
    eager = make_engine(dtype="bfloat16", int4_decode_tokens=32)  # nothing lent: torch's 4-bit kernel
    target = torch.tensor(ids[start:])
    want = _teacher_forced_logits(reference, ids, fused=False, start=start)
    results = {}
    for name, engine, on in (("fused", fused, True), ("eager, lent matmul", fused, False), ("eager", eager, False)):
        logits = _teacher_forced_logits(engine, ids, fused=on, start=start, rows=rows)
        loss = torch.nn.functional.cross_entropy(logits, target).item()
        agree = (logits.argmax(-1) == want.argmax(-1)).float().mean().item()
        results[name] = (loss, agree)
    loss_ref = torch.nn.functional.cross_entropy(want, target).item()
    eager_loss, eager_agree = results["eager"]
    for name in ("fused", "eager, lent matmul"):
        loss, agree = results[name]
        assert abs(loss - loss_ref) <= max(0.02 * loss_ref, abs(eager_loss - loss_ref) + 0.01 * loss_ref), results
        assert agree >= min(0.95, eager_agree - 0.03), results


@pytest.mark.parametrize("rows", [1, 12])
@pytest.mark.parametrize("portable", [False, True] if X86_64 else [False])
def test_the_fused_path_keeps_the_model_s_next_token_predictions(make_engine, portable: bool, rows: int) -> None:
    """Teacher-forced over real text (English and code), on this CPU's build and on the portable loop (its own
    matmul and attention code), a token a step (decode) and 12 a step (a prompt's chunks, attended by tiles)."""
    text = ("The river rises in the hills above the town and runs for forty miles to the sea. In the spring it "
            "floods the low fields, and the farmers move their sheep to the high ground until the water falls. "
            "def mean(values):\n    total = sum(values)\n    return total / len(values)\n")
    ids = make_engine().tokenizer.encode(text)
    assert len(ids) > 60
    _assert_predictions_kept(make_engine, ids, 9, portable, rows)


@pytest.mark.parametrize("portable", [False, True] if X86_64 else [False])
def test_over_a_long_context_too(make_engine, portable: bool) -> None:
    """After 600 tokens of context one sequence's keys are split into spans that threads attend to apart and
    that are merged after (decode_layer.cpp's `attend`): the predictions are kept there too."""
    _assert_predictions_kept(make_engine, _long_text(make_engine), 600, portable)


@pytest.mark.parametrize("portable", [False, True] if X86_64 else [False])
def test_a_prompt_s_chunks_run_fused_too(make_engine, portable: bool) -> None:
    """Chunks of 12 tokens after a 600-token context: each row sees the context and the rows before it in its
    own step (written by the same call before any row attends), and the predictions are kept."""
    _assert_predictions_kept(make_engine, _long_text(make_engine), 600, portable, rows=12)


def _long_text(make_engine) -> list[int]:
    from appliance.bench.engine import english_text

    ids = make_engine().tokenizer.encode(english_text())[:640]
    assert len(ids) == 640
    return ids


def test_each_row_sees_its_own_sequence_up_to_its_position() -> None:
    """The fused layer's plan for a step of two sequences: a decode token, and sparse positions of another (as
    the document cache recomputes them), against each position's slot written out by hand."""
    from appliance.engine.fused_decode import row_plan

    positions = torch.tensor([5, 1, 4, 6])  # sequence 0 decodes position 5; sequence 1 recomputes 1, 4 and 6
    tables = torch.tensor([[3, 0], [7, 2]])  # block size 4: sequence 1's positions 4..7 are in block 2
    batch = AttentionBatch([0, 1, 4], [6, 7], positions, torch.tensor([1, 29, 8, 10]), tables, 4)
    plan = row_plan(batch)
    slots = {0: [12, 13, 14, 15, 0, 1], 1: [28, 29, 30, 31, 8, 9, 10]}  # each sequence's positions 0.. in order
    want = [(0, 6), (1, 2), (1, 5), (1, 7)]  # (sequence, keys seen) of each row
    assert plan.lens.tolist() == [n for _, n in want]
    for row, (seq, n) in enumerate(want):
        assert plan.key_slots[row, :n].tolist() == slots[seq][:n]
    assert plan.slot_mapping.tolist() == [1, 29, 8, 10]
    assert plan.sequence.tolist() == [0, 1, 1, 1]


def test_decode_steps_of_few_sequences_run_fused(make_engine) -> None:
    engine = make_engine(dtype="bfloat16", int4_decode_tokens=32, compiled_decode=True, fused_decode_rows=2)
    fused = engine.runner.fused  # attached by the engine, as configured
    assert fused is not None and fused.wait(600), fused.failed
    ext, calls = fused._ext, {"layer": 0, "head": 0}

    class Counting:  # the extension's functions, counting their calls
        def __getattr__(self, name):
            return getattr(ext, name)

        def decode_layer(self, *args):
            calls["layer"] += 1
            return ext.decode_layer(*args)

        def q8_matmul(self, *args):
            calls["head"] += 1
            return ext.q8_matmul(*args)

    fused._ext = Counting()
    prompts = [engine.tokenizer.encode(p) for p in ("Paris is the capital of", "The sea is", "One, two,")]
    params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    engine.generate(prompts[:2], params)  # two streams: 5 decode steps fused, the prefill step's head fused
    layers = engine.model_config.num_layers
    assert calls == {"layer": 5 * layers, "head": 6}
    calls.update(layer=0, head=0)
    engine.generate(prompts, params)  # three streams: more than fused_decode_rows, so none of it runs fused
    assert calls == {"layer": 0, "head": 0}


def test_a_prompt_s_chunks_beside_decoding_streams_run_fused(make_engine) -> None:
    """A step that carries a stream's decode token and a prompt's chunk, within the fused layer's rows, goes
    through it whole (rows of both sequences in one call); a larger one does not."""
    engine = make_engine(dtype="bfloat16", int4_decode_tokens=32, compiled_decode=True, max_num_batched_tokens=12,
                         fused_decode_rows=16)
    fused = engine.runner.fused
    assert fused is not None and fused.wait(600), fused.failed
    ext, rows = fused._ext, []

    class Counting:  # the extension's functions, recording each layer call's row count
        def __getattr__(self, name):
            return getattr(ext, name)

        def decode_layer(self, layer, x, *args):
            rows.append(x.shape[0])
            return ext.decode_layer(layer, x, *args)

    fused._ext = Counting()
    greedy = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    engine.add_request("stream", engine.tokenizer.encode("Count: one, two,"), greedy)
    while not engine.scheduler.running or engine.scheduler.running[0].num_output_tokens < 2:
        engine.step()
    rows.clear()
    prompt = engine.tokenizer.encode("The river rises in the hills above the town and runs for forty miles to the "
                                     "sea, and in the spring it floods the low fields.")
    assert len(prompt) > 24
    engine.add_request("arrival", prompt, SamplingParams(max_tokens=2, temperature=0.0))
    engine.step()  # the stream's token and the prompt's first 11 tokens: 12 rows, fused
    layers = engine.model_config.num_layers
    assert rows == [12] * layers
    rows.clear()
    fused.max_rows = 8  # now 12 rows are too many: eager
    engine.step()
    assert rows == []


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_chunks_of_the_document_cache_are_written_as_torch_writes_them(make_engine, dtype: str) -> None:
    """The fused layer's kernel writes a reused chunk's KV into every layer's blocks, keys rotated to the new
    positions, as `kernels.rope.write_rotated` does layer by layer (to rounding of the last bit in bfloat16)."""
    from appliance.engine.doc_cache.layout import ChunkSpan
    from appliance.engine.doc_cache.tier import ChunkEntry

    engine = make_engine(dtype=dtype, int4_decode_tokens=32)
    fused = _with_fused(engine, engine.config.data_dir / "compiled")
    assert fused.wait(600)
    mover, cfg = engine.connector.mover, engine.model_config
    gen = torch.Generator().manual_seed(3)
    shape = (cfg.num_layers, 40, cfg.num_kv_heads, cfg.head_dim)
    entry = ChunkEntry("chunk", torch.randn(shape, generator=gen).to(engine.model.dtype),
                       torch.randn(shape, generator=gen).to(engine.model.dtype))
    table = [5, 2, 9, 7, 11]  # positions 37..76 land in blocks 2, 9, 7 and 11 (block size 16)
    written = {}
    for name, kernel in (("torch", None), ("fused", fused)):
        for k_cache, v_cache in engine.runner.kv_caches:
            k_cache.zero_()
            v_cache.zero_()
        mover.fused = kernel
        mover.fill(engine.backend, table, [(ChunkSpan(37, 40), entry)])
        written[name] = [(k.clone(), v.clone()) for k, v in engine.runner.kv_caches]
    for (k_torch, v_torch), (k_fused, v_fused) in zip(written["torch"], written["fused"], strict=True):
        assert k_torch.abs().sum() > 0
        torch.testing.assert_close(v_fused, v_torch, rtol=0, atol=0)
        torch.testing.assert_close(k_fused.float(), k_torch.float(), rtol=1e-2 if dtype == "bfloat16" else 1e-5,
                                   atol=1e-5)


def test_a_build_that_fails_leaves_decode_to_the_other_paths(make_engine, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    engine = make_engine(dtype="bfloat16", int4_decode_tokens=32)
    fused = _with_fused(engine, tmp_path)  # a folder of its own: nothing built there to load
    assert not fused.wait(600)
    assert fused.failed and not fused.fits(1)
    out = engine.generate([engine.tokenizer.encode("Paris is the capital of")],
                          SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))
    assert len(out[0].token_ids) == 8  # served by the eager layers


def test_the_eager_layers_small_steps_take_the_fused_matmul_once_built(make_engine) -> None:
    """On this CPU's build (AVX512-VNNI), each projection of each layer is lent the fused 4-bit matmul; a step of
    at most `int4_decode_tokens` tokens then goes through it, a larger one through the dense weights."""
    engine = make_engine(dtype="bfloat16", int4_decode_tokens=32)
    fused = _with_fused(engine, engine.config.data_dir / "compiled")
    assert fused.wait(600)
    linears = [layer.linear(name) for layer in engine.model.layers for name in ("qkv", "o", "gate_up", "down")]
    if not fused._ext.vnni:
        assert all(linear.small_kernel is None for linear in linears)  # the portable loop lends nothing
        return
    assert all(linear.small_kernel is not None for linear in linears)
    qkv, calls = engine.model.layers[0].qkv, []
    lent = qkv.small_kernel
    qkv.use_small_batch_kernel(lambda x: calls.append(x.shape[0]) or lent(x))
    with torch.inference_mode():
        small = qkv(torch.randn(32, engine.model_config.hidden_size).bfloat16())
        qkv(torch.randn(33, engine.model_config.hidden_size).bfloat16())
    assert calls == [32] and small.dtype == torch.bfloat16


def test_the_compiled_layers_keep_their_graphs_when_the_matmul_is_lent(make_engine) -> None:
    """Compiled decode, built first, serves steps of more sequences than the fused layer takes; lending the
    fused matmul to the eager layers afterwards must not make those graphs recompile (a stall of seconds in
    the middle of serving)."""
    from torch._dynamo.utils import counters

    engine = make_engine(dtype="bfloat16", int4_decode_tokens=32, compiled_decode=True, fused_decode_rows=0)
    assert engine.runner.compiled is not None and engine.runner.compiled.wait(600)
    assert _with_fused(engine, engine.config.data_dir / "compiled", max_rows=2).wait(600)
    compiled_frames = counters["frames"]["total"]
    prompts = [engine.tokenizer.encode(p) for p in ("Paris is the capital of", "The sea is", "One, two,")]
    out = engine.generate(prompts, SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))  # 3 streams
    assert [len(o.token_ids) for o in out] == [8, 8, 8]
    assert counters["frames"]["total"] == compiled_frames
