"""The shape of a Llama-family model (Llama, Mistral, Qwen2, SmolLM), independent of the file it came from."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appliance.errors import ModelLoadError

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2")


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position: int
    tie_word_embeddings: bool
    attention_bias: bool = False
    rope_scaling: tuple[tuple[str, Any], ...] | None = None  # e.g. llama3 scaling, as sorted items

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        data = json.loads(text)
        if data.get("rope_scaling") is not None:
            data["rope_scaling"] = tuple(tuple(item) for item in data["rope_scaling"])
        return cls(**data)

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Bytes of K and V one token occupies across all layers."""
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim * dtype_bytes


def config_from_hf(path: Path) -> ModelConfig:
    """Read a Hugging Face `config.json`."""
    data = json.loads(path.read_text())
    arch = data.get("model_type", "")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(f"model type {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    heads = data["num_attention_heads"]
    scaling = data.get("rope_scaling")
    return ModelConfig(
        architecture=arch,
        vocab_size=data["vocab_size"],
        hidden_size=data["hidden_size"],
        intermediate_size=data["intermediate_size"],
        num_layers=data["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=data.get("num_key_value_heads", heads),
        head_dim=data.get("head_dim") or data["hidden_size"] // heads,
        rms_norm_eps=data.get("rms_norm_eps", 1e-6),
        rope_theta=data.get("rope_theta", 10000.0),
        max_position=data.get("max_position_embeddings", 4096),
        tie_word_embeddings=data.get("tie_word_embeddings", False),
        attention_bias=data.get("attention_bias", arch == "qwen2"),
        rope_scaling=tuple(sorted(scaling.items())) if scaling else None,
    )


def config_from_gguf(fields: dict[str, Any], has_output_weight: bool) -> ModelConfig:
    """Read the `<arch>.*` metadata of a GGUF file."""
    arch = fields.get("general.architecture", "")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(f"GGUF architecture {arch!r} is not supported "
                             f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    hidden = fields[f"{arch}.embedding_length"]
    heads = fields[f"{arch}.attention.head_count"]
    vocab = fields.get(f"{arch}.vocab_size") or len(fields["tokenizer.ggml.tokens"])
    return ModelConfig(
        architecture=arch,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=fields[f"{arch}.feed_forward_length"],
        num_layers=fields[f"{arch}.block_count"],
        num_heads=heads,
        num_kv_heads=fields.get(f"{arch}.attention.head_count_kv", heads),
        head_dim=fields.get(f"{arch}.attention.key_length") or hidden // heads,
        rms_norm_eps=fields[f"{arch}.attention.layer_norm_rms_epsilon"],
        rope_theta=fields.get(f"{arch}.rope.freq_base", 10000.0),
        max_position=fields.get(f"{arch}.context_length", 4096),
        tie_word_embeddings=not has_output_weight,
        attention_bias=arch == "qwen2",
    )
