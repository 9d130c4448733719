"""Document-affinity routing as a pure function: which engine replica should serve a question, given the
passages its prompt carries and what each replica holds. Unit-tested without Ray; `routers.py` calls it.

A passage's KV is reusable at any position in a prompt (the document cache), so the best replica is the one
holding the most of the request's passage tokens, in any order. Two guards keep affinity from overloading one
replica: a replica whose queue is more than `max_queue_gap` requests longer than the least loaded one's is
ranked after every replica within the gap, and when no replica holds at least `min_overlap` of the request's
passage tokens, the least loaded one wins (nothing to gain from affinity, so spread the load).

Ties are broken by rendezvous hashing of the request's largest passage with the replica's id: the same
passages pick the same replica, and new topics on idle replicas spread over all of them instead of piling onto
the first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

Passages = Mapping[str, int]  # passage id ("<doc_id>#<chunk_id>") -> its tokens in the prompt


def passage_id(doc_id: str, chunk_id: int | None) -> str:
    """How the router, the replicas and their reports name a passage."""
    return f"{doc_id}#{chunk_id}"


@dataclass(frozen=True)
class ReplicaView:
    """What the router knows of one live replica."""

    replica_id: str
    held: Passages = field(default_factory=dict)  # what the replica last reported it holds (routing stats)
    sent: Passages = field(default_factory=dict)  # what this router sent it since that report (a burst)
    queue_len: int = 0  # requests sent to it and not finished

    def overlap(self, passages: Passages) -> int:
        """Tokens of `passages` this replica holds, or will once the requests sent to it ran."""
        return sum(tokens for pid, tokens in passages.items() if pid in self.held or pid in self.sent)


@dataclass(frozen=True)
class AffinityPolicy:
    max_queue_gap: int = 4  # requests: a replica further behind the least loaded than this is not preferred
    min_overlap: float = 0.2  # share of the request's passage tokens the best replica must hold


def rank_replicas(passages: Passages, replicas: Sequence[ReplicaView],
                  policy: AffinityPolicy = AffinityPolicy()) -> list[list[str]]:
    """Replica ids in ranks, best first (Ray's `choose_replicas` shape: each inner list one rank).

    Within the load gap, replicas rank by overlap (most passage tokens held first), then by queue length, then
    by the rendezvous hash. Every replica beyond the gap follows, least loaded first. Without passages, or with
    no replica above `min_overlap`, replicas rank by queue length, then by the rendezvous hash.
    """
    if not replicas:
        return []
    topic = max(sorted(passages), key=lambda pid: passages[pid], default="")

    def tie(r: ReplicaView) -> bytes:
        return hashlib.blake2b(f"{topic}|{r.replica_id}".encode(), digest_size=8).digest()

    least = min(r.queue_len for r in replicas)
    by_load = sorted(replicas, key=lambda r: (r.queue_len, tie(r)))
    total = sum(passages.values())
    overlaps = {r.replica_id: r.overlap(passages) for r in replicas}
    near = [r for r in by_load if r.queue_len - least <= policy.max_queue_gap]
    best = max((overlaps[r.replica_id] for r in near), default=0)
    if total <= 0 or best < policy.min_overlap * total:
        return [[r.replica_id] for r in by_load]
    near.sort(key=lambda r: (-overlaps[r.replica_id], r.queue_len, tie(r)))
    far = [r for r in by_load if r.queue_len - least > policy.max_queue_gap]
    return [[r.replica_id] for r in near + far]
