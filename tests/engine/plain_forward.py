"""One plain forward pass through an engine's model and paged cache: the tests' reference for what a step
computes."""

from __future__ import annotations

import torch

from kernels.base import AttentionBatch


def plain_logits(engine, ids: list[int]) -> torch.Tensor:
    """Logits [T, V] at every position of `ids`, the prompt alone in blocks 0.. of `engine`'s cache (use an
    engine that serves nothing else meanwhile)."""
    runner = engine.runner
    bs = runner.block_size
    blocks = torch.arange(-(-len(ids) // bs))
    batch = AttentionBatch([0, len(ids)], [len(ids)], torch.arange(len(ids)), torch.arange(len(ids)),
                           blocks[None], bs)
    with torch.inference_mode():
        hidden = engine.model.forward(torch.tensor(ids), batch.positions, runner.kv_caches, runner.backend,
                                      runner.backend.plan(batch))
        return engine.model.logits(hidden)
