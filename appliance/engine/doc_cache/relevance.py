"""Query-aware selection (after ProphetKV, QCFuse, A^3): how much attention the question pays each earlier
token at one layer. A reused passage token the question attends to is one whose stale KV reaches the answer,
so it is worth recomputing first; a token the question ignores is not, however far its KV deviates.
"""

from __future__ import annotations

import torch


def question_attention(q: torch.Tensor, context_k: torch.Tensor, own_k: torch.Tensor, scale: float) -> torch.Tensor:
    """The attention mass the question's queries put on each context position, averaged over queries and heads.

    q: [Q, H, D] the question tokens' queries (RoPE applied), in prompt order right after the context;
    context_k: [P, KVH, D] keys of every position before the question (RoPE applied);
    own_k: [Q, KVH, D] the question tokens' own keys: query i also sees own keys 0..i (causal), so the mass
    a query keeps on the question itself is not handed to the context.
    Grouped-query heads: head h reads KV head h // (H // KVH). Returns [P] float32, summing to at most 1.
    """
    n_q, heads, dim = q.shape
    kv_heads = context_k.shape[1]
    qg = q.float().view(n_q, kv_heads, heads // kv_heads, dim)  # [Q, KVH, G, D]
    to_context = torch.einsum("qkgd,pkd->qkgp", qg, context_k.float()) * scale  # [Q, KVH, G, P]
    to_own = torch.einsum("qkgd,rkd->qkgr", qg, own_k.float()) * scale  # [Q, KVH, G, Q]
    later = torch.ones(n_q, n_q, dtype=torch.bool, device=q.device).triu(1)  # [Q, Q]: key r after query i
    to_own = to_own.masked_fill(later[:, None, None, :], float("-inf"))
    probs = torch.cat([to_context, to_own], dim=-1).softmax(dim=-1)  # [Q, KVH, G, P + Q]
    return probs[..., :context_k.shape[0]].mean(dim=(0, 1, 2))  # [P]
