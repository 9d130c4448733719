"""Log-probabilities as a request receives them: per token, the token's own and its best alternatives."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenLogprobs:
    """One position: the token there, its log-probability, and the `top` most likely tokens with theirs
    (descending; tokens a constraint ruled out are left out)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def rows_to_logprobs(values: torch.Tensor, ids: torch.Tensor, widths: list[int]) -> list[TokenLogprobs]:
    """values, ids: [M, 1 + K] (column 0 the position's token, then the K best) -> one entry per row, row i
    keeping its `widths[i]` best. One transfer from the device."""
    out = []
    for row_values, row_ids, width in zip(values.tolist(), ids.tolist(), widths, strict=True):
        top = tuple((t, v) for t, v in zip(row_ids[1:1 + width], row_values[1:1 + width], strict=True)
                    if v != float("-inf"))
        out.append(TokenLogprobs(row_ids[0], row_values[0], top))
    return out
