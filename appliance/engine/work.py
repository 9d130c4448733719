"""One request's share of a step: which of its positions run, through which layers.

The scheduler lists work items; the runner computes them all in one forward pass. A plain item runs its
next tokens through every layer. The document cache's connector lists items that run only some layers (its
selection pass) or enter past the first layers with a known residual stream (its recomputed tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from appliance.engine.request import Request


@dataclass(eq=False)
class WorkItem:
    request: Request
    positions: list[int]  # ascending positions of the request's tokens computed this step
    first_layer: int = 0
    last_layer: int | None = None  # the rows leave after layer `last_layer - 1`; None: through the model
    entering: torch.Tensor | None = None  # [n, hidden] float32 residual stream entering `first_layer` (> 0)
    samples: bool = False  # the last row's next token is sampled (the request's prompt work ends here)

    @property
    def num_tokens(self) -> int:
        return len(self.positions)

    def cost(self, num_layers: int) -> int:
        """Token-budget cost: tokens times the share of the model's layers they run."""
        last = num_layers if self.last_layer is None else self.last_layer
        return math.ceil(self.num_tokens * (last - self.first_layer) / num_layers)


def rows_for_cost(budget: int, first: int, last: int, num_layers: int) -> int:
    """How many rows running layers `first`..`last - 1` fit in a token budget (at least one)."""
    return max(1, budget * num_layers // max(1, last - first))
