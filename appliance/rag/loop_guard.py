"""A guard against a small model's loops: it sometimes repeats a name until its tokens run out
(`filecmp.filecmp.filecmp...`, more often under `copy_bias`), or a sentence and its citation over and over, and
such an answer is neither right nor readable. Once an answer ends with two consecutive copies of the same block of
2 to 32 tokens, the token that would start a third copy is banned, so the model must go on with something else
(usually the stop token). A run of one token is left alone, however long: digits are tokens of their own
(`1000000`). Measured by `appliance bench answers` (lever `guard`); on by default (`APPLIANCE_LOOP_GUARD`).
"""

from __future__ import annotations

import torch


class LoopGuard:
    """Logits processor: when `generated` ends with two copies of a block of `shortest`..`longest` tokens, that
    block's first token gets -inf (never the last finite logit left: a constraint's forced token stays)."""

    def __init__(self, shortest: int = 2, longest: int = 32) -> None:
        if not 1 <= shortest <= longest:
            raise ValueError("need 1 <= shortest <= longest")
        self.shortest, self.longest = shortest, longest

    def banned(self, generated: list[int]) -> set[int]:
        """The tokens that would start a third consecutive copy of a block `generated` ends with twice (a block
        of one token repeated excepted)."""
        return {generated[-period] for period in range(self.shortest, min(self.longest, len(generated) // 2) + 1)
                if generated[-period:] == generated[-2 * period:-period] and len(set(generated[-period:])) > 1}

    def __call__(self, generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        """logits: [V] for the next token; a copy with the banned tokens at -inf, or `logits` itself."""
        ban = [t for t in self.banned(generated) if t < logits.shape[-1]]
        if not ban:
            return logits
        guarded = logits.clone()
        guarded[ban] = float("-inf")
        return guarded if bool(torch.isfinite(guarded).any()) else logits
