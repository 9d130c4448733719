"""The sampler: every row's next token in one batched pass on the logits' device.

Greedy rows take the argmax. The others are drawn with the exponential race (the argmax of probs / Exp(1)
noise, a draw from probs): temperature, top-k and top-p are per-row tensors, never a Python loop per row.
Unseeded rows take the device's default generator; a seeded row takes `seeded_noise`, which depends on
(seed, output position, token id) only, so its answer does not depend on the batch or the device.

Constraints come first: a row's grammar (`grammar.py`, batched over the step's rows) and its logits
processors (e.g. the citation constraint). Log-probabilities, for the rows that ask, are those of the
distribution drawn from: after the constraints and the temperature (a greedy row's at temperature 1), before
top-k and top-p.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from appliance.engine.grammar import GrammarMasks, GrammarState
from appliance.engine.sampling import SamplingParams
from appliance.engine.seeded_noise import exponential_noise


@dataclass
class Sampled:
    """A step's draws, on the logits' device."""

    tokens: torch.Tensor  # [N] int64
    logprob_rows: list[int]  # the rows that asked for log-probabilities
    logprobs: torch.Tensor | None = None  # [len(logprob_rows), 1 + K] float32: the drawn token's, the K best
    logprob_ids: torch.Tensor | None = None  # [len(logprob_rows), 1 + K] int64: the drawn token, the K best
    # item index -> (values, ids) [P, 1 + K] of the prompt tokens the item's positions predict (the runner's)
    prompt_logprobs: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


class Sampler:
    def __init__(self) -> None:
        self.grammar_masks: GrammarMasks | None = None  # built for the logits' width on the first grammar

    def __call__(self, logits: torch.Tensor, params: list[SamplingParams], histories: list[list[int]],
                 grammars: list[GrammarState | None] | None = None) -> Sampled:
        """logits: [N, V] float32 (constrained here, in place) -> the step's draws. `histories[i]`: row i's
        generated ids so far (its processors' input; its length is the output position a seeded draw is keyed
        by); `grammars[i]`: row i's grammar state, if it has one."""
        self._constrain(logits, params, histories, grammars or [None] * len(params))
        tokens = logits.argmax(dim=-1)  # [N]
        drawn = [i for i, p in enumerate(params) if not p.greedy]
        if drawn:
            rows = torch.tensor(drawn, device=logits.device)
            tokens[rows] = _draw(logits[rows], [params[i] for i in drawn], [len(histories[i]) for i in drawn])
        return _with_logprobs(Sampled(tokens, [i for i, p in enumerate(params) if p.logprobs is not None]),
                              logits, params)

    def _constrain(self, logits: torch.Tensor, params: list[SamplingParams], histories: list[list[int]],
                   grammars: list[GrammarState | None]) -> None:
        """Grammars first (one batched mask), then each row's processors; a row whose processors would leave
        nothing its grammar allows keeps the grammar's mask alone (the grammar is the output's contract)."""
        if any(g is not None for g in grammars):
            if self.grammar_masks is None:
                self.grammar_masks = GrammarMasks(logits.shape[1])
            self.grammar_masks.apply(logits, grammars)
        for i, p in enumerate(params):
            if not p.logits_processors:
                continue
            row = logits[i].clone() if grammars[i] is not None else logits[i]
            for proc in p.logits_processors:
                row = proc(histories[i], row)
            if grammars[i] is None or bool(torch.isfinite(row).any()):
                logits[i] = row


def _with_logprobs(sampled: Sampled, logits: torch.Tensor, params: list[SamplingParams]) -> Sampled:
    """`sampled` with the log-probabilities of the rows that ask: of the drawn token and the K most likely."""
    rows = sampled.logprob_rows
    if not rows:
        return sampled
    device = logits.device
    index = torch.tensor(rows, device=device)
    temperature = torch.tensor([params[i].temperature or 1.0 for i in rows], device=device)  # [M]
    logprobs = (logits[index] / temperature[:, None]).log_softmax(dim=-1)  # [M, V]
    drawn = sampled.tokens[index][:, None]  # [M, 1]
    k = max(params[i].logprobs or 0 for i in rows)
    best_values, best_ids = logprobs.topk(k, dim=-1) if k else (logprobs[:, :0], drawn[:, :0])  # [M, K]
    sampled.logprobs = torch.cat([logprobs.gather(1, drawn), best_values], dim=1)  # [M, 1 + K]
    sampled.logprob_ids = torch.cat([drawn, best_ids], dim=1)  # [M, 1 + K]
    return sampled


def _draw(logits: torch.Tensor, params: list[SamplingParams], steps: list[int]) -> torch.Tensor:
    """logits: [M, V] of rows that sample -> [M] token ids."""
    device = logits.device
    temperature = torch.tensor([p.temperature for p in params], device=device)  # [M]
    scaled = logits / temperature[:, None]
    if any(0 < p.top_k < scaled.shape[1] or p.top_p < 1.0 for p in params):
        candidates, probs = _truncated(scaled, params)  # [M, W] each
    else:
        candidates = torch.arange(scaled.shape[1], device=device).expand_as(scaled)  # [M, V] token ids
        probs = scaled.softmax(dim=-1)
    noise = torch.rand_like(probs).clamp_min_(2.0 ** -24).log_().neg_()  # [M, W] Exp(1): 4x cheaper than exponential_
    seeded = [i for i, p in enumerate(params) if p.seed is not None]
    if seeded:  # keyed by token id, not by rank: the draw does not depend on the batch's width
        rows = torch.tensor(seeded, device=device)
        noise[rows] = exponential_noise([params[i].seed or 0 for i in seeded], [steps[i] for i in seeded],
                                        candidates[rows])
    pick = (probs / noise).argmax(dim=-1, keepdim=True)  # [M, 1] index into the candidates
    return candidates.gather(1, pick).squeeze(1)


_TOP_P_WIDTH = 1024  # candidates a top-p row without top-k starts from (a full sort costs 7x more on a CPU)


def _truncated(scaled: torch.Tensor, params: list[SamplingParams]) -> tuple[torch.Tensor, torch.Tensor]:
    """scaled: [M, V] logits over temperature -> each row's best W token ids [M, W] and their probabilities
    after top-k (renormalised over the k kept) and top-p (the smallest prefix whose mass reaches top_p), 0 for
    the dropped. W covers every row's top-k; a row without one takes the best `_TOP_P_WIDTH`, or all of V when
    they hold less than its top_p (a check that waits for the device: the step's transfer follows anyway)."""
    device = scaled.device
    vocab = scaled.shape[1]
    top_k = torch.tensor([p.top_k if 0 < p.top_k < vocab else 0 for p in params], device=device)  # [M], 0: none
    top_p = torch.tensor([p.top_p for p in params], device=device)[:, None]  # [M, 1]
    without_k = [i for i, p in enumerate(params) if not 0 < p.top_k < vocab]
    width = max(p.top_k if 0 < p.top_k < vocab else min(vocab, _TOP_P_WIDTH) for p in params)
    while True:
        values, candidates = scaled.topk(width, dim=-1)  # [M, W] descending
        limit = torch.where(top_k > 0, top_k, width)  # [M]
        values = values.masked_fill(torch.arange(width, device=device)[None, :] >= limit[:, None], float("-inf"))
        # a row with top-k renormalises over its k; one without keeps its share of the whole distribution
        norm = torch.where(top_k > 0, values.logsumexp(dim=-1), scaled.logsumexp(dim=-1))  # [M]
        probs = (values - norm[:, None]).exp()  # [M, W]
        cumulative = probs.cumsum(dim=-1)
        if width == vocab or not without_k or bool((cumulative[without_k, -1] >= top_p[without_k, 0]).all()):
            return candidates, probs.masked_fill(cumulative - probs > top_p, 0.0)
        width = vocab
