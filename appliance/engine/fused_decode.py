"""Decode steps of up to `max_rows` sequences on the CPU through one fused C++ call per layer (`kernels/cpu_decode`).

A decode step of one stream is bound by per-op overhead: even compiled (`compiled_decode.py`), a layer is ~13
calls, each paying dispatch, guard and thread-team costs, and torch's 4-bit matmul unpacks weights at a third
of what the CPU's u8 x s8 dot products allow. The fused layer does the whole layer in one call, with the
GGUF's 4-bit weights in a layout of its own (`kernels.cpu_decode.tile_q4`) against activations rounded to 8 bits
per group of 32, as llama.cpp does; the LM head of such a step reads 8-bit weights the same way (`logits`).

Its 4-bit matmul also serves the eager layers' steps of at most `int4_decode_tokens` tokens once built (a
decode step beside a prompt's chunk, a small prompt chunk, a document-cache phase): in place of torch's 4-bit
kernel (`quant.Linear.use_small_batch_kernel`), on CPUs with AVX512-VNNI.

The extension is compiled on a background thread at start (~25 s the first time, then loaded from
`<data_dir>/compiled/cpu_decode-<key>` in under a second) while the other paths serve; steps of at most
`max_rows` sequences switch to it once `ready`. A build that fails (no C++ compiler) is logged once and
decode keeps the other paths.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from appliance.engine.background_build import BackgroundBuild
from appliance.engine.model import PROJECTIONS
from appliance.engine.quant import Int4Weight
from kernels.base import AttentionBackend

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


class FusedDecode(BackgroundBuild):
    """Contract: a `LayerCall` for decode steps (`compiled_decode.is_decode_step`) of at most `max_rows`
    sequences over the torch attention backend's plan, usable once `ready`; built by `start` on a background
    thread (`wait` joins it: `BackgroundBuild`). Holds the loader's 4-bit weights only until they are tiled."""

    name = "fused decode"
    fallback = "decode steps keep the other paths"

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

    def fits(self, num_seqs: int) -> bool:
        """Whether a decode step of `num_seqs` sequences runs here."""
        return self.ready and num_seqs <= self.max_rows

    def __call__(self, layer: DecoderLayer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 k_cache: torch.Tensor, v_cache: torch.Tensor, backend: AttentionBackend, plan: Any) -> torch.Tensor:
        """x: [B, hidden] float32, one token per sequence, in the plan's decode order -> x leaving `layer`."""
        cos32, sin32 = self._float_tables(cos, sin)
        return self._ext.decode_layer(self._layers[id(layer)], x.contiguous(), cos32, sin32, k_cache, v_cache,
                                      plan.slot_mapping, plan.decode_slots, plan.decode_lens)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [N, hidden] normed final states (N <= max_rows) -> float32 logits [N, V] from the 8-bit head."""
        return self._ext.q8_matmul(self._head, hidden.float().contiguous())

    def _float_tables(self, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin: [B, 1, D] in the model's dtype (one pair per step, shared by its layers) -> [B, D] float32."""
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
