"""Ray Serve request routers for the `Engine` deployment, by the name `appliance serve --router` takes.

- `affinity` (`DocumentAffinityRouter`): the replica holding most of the request's passage tokens
  (`affinity.rank_replicas`), weighing what each replica reported (`record_routing_stats`) and what this router
  sent it since (a burst on a new topic stays together before the next report), with the load guard.
- `round-robin` (`RoundRobinRouter`): each replica in turn.
- `pow2`: Ray Serve's own power-of-two-choices router (least loaded of two at random).
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from appliance.cluster.affinity import AffinityPolicy, ReplicaView, rank_replicas

ROUTERS = {
    "affinity": "appliance.cluster.routers:DocumentAffinityRouter",
    "round-robin": "appliance.cluster.routers:RoundRobinRouter",
    "pow2": "ray.serve._private.request_router.pow_2_router:PowerOfTwoChoicesRequestRouter",
}


def _passages(pending_request: PendingRequest | None) -> dict[str, int]:
    if pending_request is None:
        return {}
    return pending_request.kwargs.get("passages") or {}


class DocumentAffinityRouter(RequestRouter):
    def initialize_state(self, **kwargs: Any) -> None:
        """kwargs (the deployment's `request_router_kwargs`): `max_queue_gap` and `min_overlap` (see
        `AffinityPolicy`), `burst_memory_s` (how long passages this router sent count as held there)."""
        self.policy = AffinityPolicy(kwargs.get("max_queue_gap", AffinityPolicy.max_queue_gap),
                                     kwargs.get("min_overlap", AffinityPolicy.min_overlap))
        self.burst_memory_s = kwargs.get("burst_memory_s", 5.0)  # a few stats periods: by then it reports them
        self._in_flight: defaultdict[ReplicaID, int] = defaultdict(int)
        self._sent: defaultdict[ReplicaID, dict[str, tuple[int, float]]] = defaultdict(dict)  # pid -> tokens, t

    def _view(self, replica: RunningReplica, now: float) -> ReplicaView:
        rid = replica.replica_id
        sent = self._sent[rid]
        for pid in [pid for pid, (_, at) in sent.items() if now - at > self.burst_memory_s]:
            del sent[pid]
        cached = self.replica_queue_len_cache.get(rid)
        return ReplicaView(rid.unique_id, held=(replica.routing_stats or {}).get("held", {}),
                           sent={pid: tokens for pid, (tokens, _) in sent.items()},
                           queue_len=max(self._in_flight[rid], cached or 0))

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        now = time.monotonic()
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        passages = _passages(pending_request)
        ranks = [[by_id[rid] for rid in rank]
                 for rank in rank_replicas(passages, [self._view(r, now) for r in candidate_replicas], self.policy)]
        if ranks and passages:  # Ray sends it to the first rank unless that replica is full (max_ongoing_requests)
            self._sent[ranks[0][0].replica_id].update({pid: (tokens, now) for pid, tokens in passages.items()})
        return ranks

    def on_send_request(self, replica_id: ReplicaID) -> None:
        super().on_send_request(replica_id)
        self._in_flight[replica_id] += 1

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        self._in_flight[replica_id] = max(0, self._in_flight[replica_id] - 1)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._in_flight.pop(replica_id, None)
        self._sent.pop(replica_id, None)


class RoundRobinRouter(RequestRouter):
    def initialize_state(self, **kwargs: Any) -> None:
        self._turn = itertools.count()

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        ordered = sorted(candidate_replicas, key=lambda r: r.replica_id.unique_id)
        first = next(self._turn) % len(ordered)
        return [[r] for r in ordered[first:] + ordered[:first]]
