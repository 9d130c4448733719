"""Llama-family decoder (Llama, Mistral, Qwen2, SmolLM) written for a paged, ragged batch.

Tokens of all scheduled sequences are flattened into one dimension T; attention goes through a
`kernels` backend that reads and writes the paged KV cache. Q/K/V and gate/up projections are fused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from appliance.engine.model_config import ModelConfig
from appliance.engine.quant import Int4Weight, Linear
from kernels.base import AttentionBackend
from kernels.rope import RotaryEmbedding, apply_rotary

KVPair = tuple[torch.Tensor, torch.Tensor]  # (k_cache, v_cache) of one layer, each [num_blocks, block_size, KVH, D]
# How a layer is run: (layer, x, cos, sin, k_cache, v_cache, backend, plan) -> x (eager: the layer's own call)
LayerCall = Callable[["DecoderLayer", torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                      AttentionBackend, Any], torch.Tensor]

# A layer's fused projections, each the stored weights (under "model.layers.<i>.") whose rows it concatenates
PROJECTIONS = {"qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "o": ("self_attn.o_proj",),
               "gate_up": ("mlp.gate_proj", "mlp.up_proj"), "down": ("mlp.down_proj",)}


class DecoderLayer:
    """One transformer block: RMSNorm -> attention -> RMSNorm -> SwiGLU MLP, both with residuals."""

    def __init__(self, cfg: ModelConfig, w: dict[str, torch.Tensor], int4: dict[str, Int4Weight], prefix: str,
                 dtype: torch.dtype, device: torch.device, small_batch: int) -> None:
        def get(name: str) -> torch.Tensor:
            return w[prefix + name].to(dtype=dtype, device=device)

        def linear(*names: str, bias: bool = False) -> Linear:
            """Fused projection over the rows of `names` (dense, plus int4 when every part has it)."""
            parts = [int4[prefix + n + ".weight"] for n in names if prefix + n + ".weight" in int4]
            packed = Int4Weight.cat(parts) if len(parts) == len(names) else None
            return Linear(torch.cat([get(n + ".weight") for n in names]),
                          torch.cat([get(n + ".bias") for n in names]) if bias else None, packed, small_batch)

        self.qkv = linear(*PROJECTIONS["qkv"], bias=cfg.attention_bias)
        self.o_proj = linear(*PROJECTIONS["o"])  # [hidden, H * D]
        self.gate_up = linear(*PROJECTIONS["gate_up"])  # [2I, hidden]
        self.down = linear(*PROJECTIONS["down"])  # [hidden, I]
        # The residual stream stays float32 whatever the dtype (more accurate, and float32 RMSNorm is cheaper
        # on CPU than bf16 with its internal up-casts); norms hand the matmuls their input in `dtype`.
        self.input_norm = w[prefix + "input_layernorm.weight"].to(dtype=torch.float32, device=device)
        self.post_norm = w[prefix + "post_attention_layernorm.weight"].to(dtype=torch.float32, device=device)
        self.dtype = dtype
        self.eps = cfg.rms_norm_eps
        self.q_size = cfg.num_heads * cfg.head_dim
        self.kv_size = cfg.num_kv_heads * cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

    def linear(self, name: str) -> Linear:
        """The fused projection `name` (a key of PROJECTIONS)."""
        return {"qkv": self.qkv, "o": self.o_proj, "gate_up": self.gate_up, "down": self.down}[name]

    def __call__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor,
                 v_cache: torch.Tensor, backend: AttentionBackend, plan: Any) -> torch.Tensor:
        """x: [T, hidden] float32 residual stream -> [T, hidden] float32."""
        t = x.shape[0]
        q, k, v = self.project(x, cos, sin)
        attn = backend.forward(q, k, v, k_cache, v_cache, plan)  # [T, H, D]
        x = x + self.o_proj(attn.reshape(t, self.q_size))
        h = F.rms_norm(x, (x.shape[-1],), self.post_norm, self.eps).to(self.dtype)
        gate, up = self.gate_up(h).chunk(2, dim=-1)  # [T, I] each
        return x + self.down(F.silu(gate) * up)

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: [T, hidden] float32 residual stream entering the layer -> its attention inputs: q [T, H, D] and
        k [T, KVH, D] with RoPE applied, v [T, KVH, D]."""
        t = x.shape[0]
        h = F.rms_norm(x, (x.shape[-1],), self.input_norm, self.eps).to(self.dtype)
        qkv = self.qkv(h)  # [T, (H + 2*KVH) * D]
        qk, v = qkv.split([self.q_size + self.kv_size, self.kv_size], dim=-1)
        qk = apply_rotary(qk.view(t, self.num_heads + self.num_kv_heads, self.head_dim), cos, sin)  # [T, H+KVH, D]
        q, k = qk.split([self.num_heads, self.num_kv_heads], dim=1)  # [T, H, D], [T, KVH, D]
        return q, k, v.view(t, self.num_kv_heads, self.head_dim)


@dataclass
class LayerSpan:
    """Layers `first`..`last - 1` run over some rows of a flat batch (`rows` None: every row) by `call` (None:
    the run's), with `plan` the plan `call` reads for exactly those rows' sequences (the backend's for the
    eager and compiled layers)."""

    first: int
    last: int
    rows: torch.Tensor | None
    plan: Any
    call: LayerCall | None = None


class CausalLM:
    """The whole model: embeddings, decoder layers, final norm and LM head."""

    def __init__(self, cfg: ModelConfig, weights: dict[str, torch.Tensor], dtype: torch.dtype,
                 device: torch.device, int4: dict[str, Int4Weight] | None = None, small_batch: int = 0) -> None:
        """`int4` weights serve steps of at most `small_batch` tokens (0: always dense)."""
        self.config = cfg
        self.dtype, self.device = dtype, device
        self.embed = weights["model.embed_tokens.weight"].to(dtype=dtype, device=device)  # [V, hidden]
        head_dense = head_weights(cfg, weights).to(dtype=dtype, device=device)
        # only sampled rows reach the head, so it always runs as a small batch; int8 halves what decode reads
        self.lm_head = Linear(head_dense, small_batch=small_batch, int8=small_batch > 0)
        self.norm = weights["model.norm.weight"].to(dtype=torch.float32, device=device)
        self.layers = [DecoderLayer(cfg, weights, int4 or {}, f"model.layers.{i}.", dtype, device, small_batch)
                       for i in range(cfg.num_layers)]
        scaling = dict(cfg.rope_scaling) if cfg.rope_scaling else None
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.max_position, cfg.rope_theta, scaling, dtype, device)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[KVPair],
                backend: AttentionBackend, plan: Any) -> torch.Tensor:
        """input_ids, positions: [T] through every layer -> final hidden states [T, hidden] (before the LM head)."""
        spans = [LayerSpan(0, self.config.num_layers, None, plan)]
        return self.final_norm(self.run_layers(self.embed_tokens(input_ids), positions, kv_caches, backend, spans))

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids: [T] -> the residual stream entering layer 0, [T, hidden] float32."""
        return self.embed[input_ids].float()

    def run_layers(self, x: torch.Tensor, positions: torch.Tensor, kv_caches: list[KVPair],
                   backend: AttentionBackend, spans: list[LayerSpan], layer_call: LayerCall | None = None
                   ) -> torch.Tensor:
        """x: [T, hidden] float32 residual stream, carried through `spans` in order (each span's rows through its
        layers, their K/V landing in `kv_caches`, one pair per layer of the model) -> x as the spans left it.
        Rows enter a span with the stream the previous spans left them (or the one given). `layer_call` runs
        each layer of a span that names none (None: eagerly; `compiled_decode.CompiledDecode` for decode steps on
        a CPU)."""
        cos, sin = self.rope.tables(positions)
        default = layer_call or eager_layer_call
        for span in spans:
            caches = kv_caches[span.first:span.last]
            call = span.call or default
            if span.rows is None:
                x = self._through(x, cos, sin, span.first, caches, backend, span.plan, call)
            else:
                r = span.rows
                x[r] = self._through(x[r], cos[r], sin[r], span.first, caches, backend, span.plan, call)
        return x

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, hidden] float32 leaving the last layer -> [N, hidden] in the model dtype, ready for the head."""
        return F.rms_norm(x, (x.shape[-1],), self.norm, self.config.rms_norm_eps).to(self.dtype)

    def attention_inputs(self, hidden: torch.Tensor, positions: torch.Tensor, layer: int
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """hidden: [T, hidden] float32 entering `layer`, at `positions` [T] -> that layer's q [T, H, D], k and v
        [T, KVH, D] (RoPE applied), without attending or writing the cache."""
        cos, sin = self.rope.tables(positions)
        return self.layers[layer].project(hidden, cos, sin)

    def _through(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, first: int, kv_caches: list[KVPair],
                 backend: AttentionBackend, plan: Any, call: LayerCall) -> torch.Tensor:
        """x: [T, hidden] float32 entering layer `first` -> leaving layer `first + len(kv_caches) - 1`."""
        for layer, (k_cache, v_cache) in zip(self.layers[first:first + len(kv_caches)], kv_caches, strict=True):
            x = call(layer, x, cos, sin, k_cache, v_cache, backend, plan)
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [N, hidden] -> float32 logits [N, V]."""
        return self.lm_head(hidden).float()


def head_weights(cfg: ModelConfig, weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """The LM head's weights [V, hidden] as loaded: the embeddings when tied (or when no head is stored)."""
    head = weights.get("lm_head.weight")
    return weights["model.embed_tokens.weight"] if cfg.tie_word_embeddings or head is None else head


def eager_layer_call(layer: DecoderLayer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     k_cache: torch.Tensor, v_cache: torch.Tensor, backend: AttentionBackend, plan: Any
                     ) -> torch.Tensor:
    """The `LayerCall` that runs the layer eagerly: a function of the layer, so that a compiler tracing it sees
    the layer's weights as inputs (one graph for every layer)."""
    return layer(x, cos, sin, k_cache, v_cache, backend, plan)
