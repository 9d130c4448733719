"""Steps of up to `max_rows` rows (tokens) on the CPU through one fused C++ call per layer (`kernels/cpu_decode`).

A decode step of one stream is bound by per-op overhead: even compiled (`compiled_decode.py`), a layer is ~13
calls, each paying dispatch, guard and thread-team costs, and torch's 4-bit matmul unpacks weights at a third
of what the CPU's u8 x s8 dot products allow. The fused layer does the whole layer in one call, with the
GGUF's 4-bit weights in a layout of its own (`kernels.cpu_decode.tile_q4`) against activations rounded to 8 bits
per group of 32, as llama.cpp does; the LM head of such a step reads 8-bit weights the same way (`logits`).

Any layer span of at most `max_rows` rows runs here, not only decode steps: each row is one token that sees
the keys of its sequence up to its own position (`RowPlan`), so a prompt's chunk beside running streams, or a
document-cache phase of a few tokens, costs what as many decode rows would instead of an eager step. Its 4-bit
matmul also serves the eager layers' steps of at most `int4_decode_tokens` tokens that it does not take
itself, in place of torch's 4-bit kernel (`quant.Linear.use_small_batch_kernel`), on CPUs with AVX512-VNNI;
and its kernel writes the document cache's reused chunks into the blocks (`fill`).

The extension is compiled on a background thread at start (~25 s the first time, then loaded from
`<data_dir>/compiled/cpu_decode-<key>` in under a second) while the other paths serve; spans of at most
`max_rows` rows switch to it once `ready`. A build that fails (no C++ compiler) is logged once and
steps keep the other paths.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from appliance.engine.background_build import BackgroundBuild
from appliance.engine.model import PROJECTIONS
from appliance.engine.quant import Int4Weight
from kernels.base import AttentionBackend, AttentionBatch

if TYPE_CHECKING:
    from appliance.engine.model import CausalLM, DecoderLayer

def fusable(model: CausalLM, int4: dict[str, Int4Weight]) -> bool:
    """Whether every projection of every layer has 4-bit weights that tile (rows % 16, columns % 32), and so does
    the LM head (its vocabulary a multiple of 16)."""
    if model.config.vocab_size % 16 or model.config.hidden_size % 32:
        return False
    for i in range(model.config.num_layers):
        for parts in PROJECTIONS.values():
            names = [f"model.layers.{i}.{p}.weight" for p in parts]
            if any(n not in int4 for n in names):
                return False
            rows = sum(int4[n].q.shape[0] for n in names)
            if rows % 16 or int4[names[0]].q.shape[1] % 32:
                return False
    return True


@dataclass
class RowPlan:
    """What the fused layer reads of a span's rows: where each row's K/V is written and which keys it sees."""

    slot_mapping: torch.Tensor  # [T] int64: the cache slot of each row's own K/V
    key_slots: torch.Tensor  # [T, L] int64: the cache slots of each row's sequence, positions 0.. (padded)
    lens: torch.Tensor  # [T] int64: keys row t sees, a prefix of key_slots[t]: every position up to its own
    sequence: torch.Tensor  # [T] int64: the row's sequence in the batch (its rows consecutive)


def row_plan(batch: AttentionBatch) -> RowPlan:
    """Each row (token) of `batch` sees its sequence's keys up to its own position, in any order of positions
    (a chunk, a decode token, the document cache's sparse recomputed tokens); the layer writes every row's K/V
    before any row attends, so rows of one sequence in the same step see each other's."""
    counts = torch.tensor([batch.query_start_loc[i + 1] - batch.query_start_loc[i] for i in range(batch.num_seqs)],
                          device=batch.positions.device)
    sequence = torch.repeat_interleave(torch.arange(batch.num_seqs, device=counts.device), counts)  # [T]
    lens = batch.positions + 1  # [T]
    idx = torch.arange(int(lens.max()), device=lens.device)  # [L]
    tables = batch.block_tables[sequence]  # [T, max_blocks]
    key_slots = tables.gather(1, (idx // batch.block_size).expand(len(lens), -1)) * batch.block_size \
        + idx % batch.block_size  # [T, L]
    return RowPlan(batch.slot_mapping, key_slots, lens, sequence)


class FusedDecode(BackgroundBuild):
    """Contract: a `LayerCall` for layer spans of at most `max_rows` rows over a `RowPlan` (`plan`), usable once
    `ready`; built by `start` on a background thread (`wait` joins it: `BackgroundBuild`). Holds the loader's
    4-bit weights only until they are tiled."""

    name = "fused decode"
    fallback = "steps keep the other paths"

    def __init__(self, model: CausalLM, int4: dict[str, Int4Weight], head: torch.Tensor, cache_dir: Path,
                 max_rows: int = 32, portable: bool = False) -> None:
        """`int4`: the loader's 4-bit weights; `head`: the LM head's float weights [V, hidden] (the GGUF's Q8_0
        values, which `tile_q8` keeps exactly); `portable`: the loop every x86-64 CPU runs instead of this CPU's
        instructions (tests)."""
        super().__init__()
        self.model, self.cache_dir, self.max_rows, self.portable = model, cache_dir, max_rows, portable
        self._int4: dict[str, Int4Weight] | None = int4
        self._head_source: torch.Tensor | None = head
        self._layers: dict[int, Any] = {}  # id(DecoderLayer) -> the extension's Layer
        self._head: Any = None
        self._ext: Any = None
        self._tables: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (cos given, cos, sin)

    def fits(self, num_rows: int) -> bool:
        """Whether a span of `num_rows` rows (tokens) runs here."""
        return self.ready and num_rows <= self.max_rows

    def plan(self, batch: AttentionBatch) -> RowPlan:
        """The plan this layer reads for `batch`'s rows (`row_plan`)."""
        return row_plan(batch)

    def __call__(self, layer: DecoderLayer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 k_cache: torch.Tensor, v_cache: torch.Tensor, backend: AttentionBackend, plan: RowPlan
                 ) -> torch.Tensor:
        """x: [T, hidden] float32, the rows of `plan` (from `row_plan`) -> x leaving `layer`."""
        cos32, sin32 = self._float_tables(cos, sin)
        return self._ext.decode_layer(self._layers[id(layer)], x.contiguous(), cos32, sin32, k_cache, v_cache,
                                      plan.slot_mapping, plan.key_slots, plan.lens, plan.sequence)

    def fill(self, kv_caches: list[tuple[torch.Tensor, torch.Tensor]], k_pre: torch.Tensor, v: torch.Tensor,
             slots: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
        """Write a chunk's KV into the given caches, one pair per layer (all of the model's or a range of them),
        keys rotated (`kernels.rope.write_rotated`'s contract, every given layer in one call). k_pre, v: [len(
        kv_caches), n, KVH, D], those layers'; slots: [n]; cos, sin: [n, 1, D] float32. False (nothing written)
        where the chunk's dtype is not the caches'."""
        if k_pre.dtype != kv_caches[0][0].dtype:
            return False
        n = slots.shape[0]
        self._ext.fill_rotated([k for k, _ in kv_caches], [v for _, v in kv_caches], k_pre.contiguous(),
                               v.contiguous(), slots, cos.reshape(n, -1).contiguous(), sin.reshape(n, -1).contiguous())
        return True

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [N, hidden] normed final states (N <= max_rows) -> float32 logits [N, V] from the 8-bit head."""
        return self._ext.q8_matmul(self._head, hidden.float().contiguous())

    def _float_tables(self, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin: [T, 1, D] in the model's dtype (one pair per span, shared by its layers) -> [T, D] float32."""
        if self._tables is None or self._tables[0] is not cos:
            self._tables = (cos, cos.reshape(cos.shape[0], -1).float(), sin.reshape(sin.shape[0], -1).float())
        return self._tables[1], self._tables[2]

    def _build(self) -> str:
        from kernels.cpu_decode import build, tile_q8

        self._ext = build(self.cache_dir, portable=self.portable)
        for i, layer in enumerate(self.model.layers):
            linears = self._linears(i, layer)
            self._layers[id(layer)] = self._layer(layer, linears)
            if self._ext.vnni:  # measured faster than torch's 4-bit kernel there; the portable loop was not measured
                self._lend(layer, linears)
        assert self._head_source is not None
        self._head = self._ext.Q8Linear(*tile_q8(self._head_source))
        return "AVX512-VNNI" if self._ext.vnni else "portable loop"

    def _done(self) -> None:
        self._int4 = self._head_source = None  # tiled now, or never to be

    def _linears(self, index: int, layer: DecoderLayer) -> dict[str, Any]:
        """The extension's Q4Linear of each projection of decoder layer `index` (a key of PROJECTIONS each)."""
        from kernels.cpu_decode import tile_q4

        assert self._int4 is not None
        linears = {}
        for name, parts in PROJECTIONS.items():
            weight = Int4Weight.cat([self._int4[f"model.layers.{index}.{p}.weight"] for p in parts])
            # w = (q - 8) * scale + zero  ==  q * d + m
            packed, d, m = tile_q4(weight.q, weight.scale, weight.zero - 8 * weight.scale)
            bias = layer.linear(name).bias
            linears[name] = self._ext.Q4Linear(packed, d, m, None if bias is None else bias.float())
        return linears

    def _layer(self, layer: DecoderLayer, linears: dict[str, Any]) -> Any:
        """The extension's Layer: the four projections, norms, shapes."""
        return self._ext.Layer(linears["qkv"], linears["o"], linears["gate_up"], linears["down"], layer.input_norm,
                               layer.post_norm, layer.eps, layer.num_heads, layer.num_kv_heads, layer.head_dim)

    def _lend(self, layer: DecoderLayer, linears: dict[str, Any]) -> None:
        """Lend each projection's 4-bit matmul to the eager layer's `Linear` (its small steps)."""
        for name, linear in linears.items():
            layer.linear(name).use_small_batch_kernel(functools.partial(self._ext.q4_matmul, linear))
