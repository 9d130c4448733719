"""Builds the engine's document cache from its configuration."""

from __future__ import annotations

import torch

from appliance.config import EngineConfig
from appliance.engine.doc_cache.disk import DiskTier, KVFormat
from appliance.engine.doc_cache.manager import BlendConfig, DocCache
from appliance.engine.doc_cache.tier import ChunkTier


def build_doc_cache(config: EngineConfig, salt: bytes, dtype: torch.dtype, budget_bytes: int, num_layers: int
                    ) -> DocCache:
    """A chunk tier of `budget_bytes`, plus the disk tier under `<data_dir>/kvcache/<salt>` when it has a budget.
    Blend's selection pass runs at most the model's `num_layers`, carries at least the share it recomputes and
    reads the question's attention at one of the model's layers."""
    disk = None
    if config.doc_cache_disk_mb > 0:
        root = config.data_dir / "kvcache" / salt.hex()[:16]
        fmt: KVFormat = "int8" if config.doc_cache_kv_format == "int8" else "model"
        disk = DiskTier(root, fmt, config.doc_cache_disk_mb * 2**20, dtype)
    blend = BlendConfig(config.blend_ratio, config.blend_first_tokens, min(config.blend_select_layers, num_layers),
                        max(config.blend_candidates, config.blend_ratio), config.blend_select,
                        min(config.blend_query_layer, num_layers - 1))
    return DocCache(ChunkTier(budget_bytes), disk, salt, blend)
