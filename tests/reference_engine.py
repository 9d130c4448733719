"""The engine configuration tests hold outputs against: float32 with dense weights in every step (no 4-bit decode
path, whose bf16 activations make a step's numerics depend on how its tokens are batched), eager layers (no
compiled decode, whose build would cost every test engine seconds of CPU)."""

from __future__ import annotations

from pathlib import Path

from appliance.config import EngineConfig

REFERENCE_ENGINE: dict[str, object] = {"dtype": "float32", "kv_cache_mb": 256, "int4_decode_tokens": 0,
                                       "compiled_decode": False}


def reference_config(model_cache_dir: Path, **overrides: object) -> EngineConfig:
    """The reference over the weights converted into `model_cache_dir` (its data dir unless `data_dir` is among
    the overrides); keyword arguments override EngineConfig fields."""
    return EngineConfig(**{"data_dir": model_cache_dir, **REFERENCE_ENGINE, **overrides})  # type: ignore[arg-type]
