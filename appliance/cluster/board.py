"""The cluster's notice board: one small Ray actor that every engine replica reports to about once a second
(its load, its engine's figures, the passages it holds) and that carries document invalidations from the API
to every replica. Ray Serve routes each call to one replica; this is how something reaches them all.

A replica not heard from for `STALE_AFTER_S` is left out (it died, or Ray is replacing it).
"""

from __future__ import annotations

import time

import ray

from appliance.engine.snapshot import ReplicaReport


@ray.remote(num_cpus=0)
class ClusterBoard:
    STALE_AFTER_S = 10.0

    def __init__(self) -> None:
        self._reports: dict[str, ReplicaReport] = {}
        self._invalidations: list[list[str]] = []  # the n-th published batch of doc ids

    def report(self, report: ReplicaReport) -> None:
        self._reports[report.replica_id] = report

    def leave(self, replica_id: str) -> None:
        self._reports.pop(replica_id, None)

    def replicas(self) -> list[ReplicaReport]:
        """The live replicas' latest reports, by replica id."""
        now = time.time()
        return sorted((r for r in self._reports.values() if now - r.at <= self.STALE_AFTER_S),
                      key=lambda r: r.replica_id)

    def invalidate(self, doc_ids: list[str]) -> int:
        """Publish documents whose cached KV every replica must drop; returns the log's new length."""
        self._invalidations.append(list(doc_ids))
        return len(self._invalidations)

    def invalidations_since(self, seen: int) -> tuple[int, list[str]]:
        """(the log's length, the doc ids published after the first `seen` batches)."""
        return len(self._invalidations), [d for batch in self._invalidations[seen:] for d in batch]


def board_name(app_name: str) -> str:
    return f"appliance-board-{app_name}"


BOARD_NAMESPACE = "appliance"


def get_board(app_name: str) -> ray.actor.ActorHandle:
    """The board of a running cluster app (its launcher created it)."""
    return ray.get_actor(board_name(app_name), namespace=BOARD_NAMESPACE)
