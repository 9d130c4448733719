"""A decoding bias toward the passages' own words: a small model asked about a name it does not know makes one
up (`libc`, `cProfile` for a function of `filecmp`), and such an answer can neither be right nor cited. Adding
`bias` to the logit of every token that occurs in the passages (and to the stop tokens, so that ending an answer
stays as likely as before) tilts its choices toward what the passages say, at no cost per step but one indexed
add. Measured by `appliance bench answers` (lever `copyN`); 3 by default (`APPLIANCE_COPY_BIAS`, 0: off).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class PassageCopyBias:
    """Logits processor: `logits[t] += bias` for every token id `t` of the passages and of `also`."""

    def __init__(self, passages: Iterable[Iterable[int]], bias: float, also: Iterable[int] = ()) -> None:
        ids: set[int] = set(also)
        for token_ids in passages:
            ids.update(token_ids)
        self.token_ids = sorted(ids)
        self.bias = bias
        self._index: torch.Tensor | None = None  # token_ids on the logits' device, made on first use

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_index": None}

    def __call__(self, generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        """logits: [V] for the next token; a biased copy (ids past the vocabulary are left out)."""
        if self._index is None or self._index.device != logits.device:
            ids = [t for t in self.token_ids if t < logits.shape[-1]]
            self._index = torch.tensor(ids, dtype=torch.long, device=logits.device)
        biased = logits.clone()
        biased[self._index] += self.bias
        return biased
