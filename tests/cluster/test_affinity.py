"""The affinity router's scoring (`appliance.cluster.affinity.rank_replicas`) on hand-computed cases."""

from __future__ import annotations

from appliance.cluster.affinity import AffinityPolicy, ReplicaView, rank_replicas

PASSAGES = {"a#1": 100, "a#2": 100, "b#1": 50, "c#1": 50}  # 300 tokens


def ids(ranks: list[list[str]]) -> list[str]:
    assert all(len(rank) == 1 for rank in ranks)
    return [rank[0] for rank in ranks]


def test_the_replica_holding_most_passage_tokens_ranks_first_in_any_order() -> None:
    # r1 holds a#1 + b#1 = 150 tokens; r2 holds b#1 + c#1 = 100 tokens (more passages, fewer tokens); r3 nothing
    replicas = [ReplicaView("r2", held={"c#1": 50, "b#1": 50}), ReplicaView("r3"),
                ReplicaView("r1", held={"b#1": 50, "a#1": 100, "z#9": 400})]
    assert ids(rank_replicas(PASSAGES, replicas)) == ["r1", "r2", "r3"]


def test_equal_overlap_goes_to_the_shorter_queue() -> None:
    replicas = [ReplicaView("r1", held={"a#1": 100}, queue_len=1), ReplicaView("r2", held={"a#2": 100}, queue_len=0)]
    assert ids(rank_replicas(PASSAGES, replicas)) == ["r2", "r1"]


def test_on_equal_replicas_the_same_passages_pick_the_same_replica_and_new_topics_spread() -> None:
    idle = [ReplicaView(f"r{i}") for i in range(4)]
    firsts = set()
    for topic in range(40):
        passages = {f"doc{topic}#1": 120, f"doc{topic}#2": 80}
        first = ids(rank_replicas(passages, idle))[0]
        assert ids(rank_replicas(passages, list(reversed(idle))))[0] == first  # whatever order Ray lists them
        firsts.add(first)
    assert firsts == {"r0", "r1", "r2", "r3"}


def test_what_the_router_just_sent_counts_as_held_so_a_burst_stays_together() -> None:
    # neither replica reported anything yet; the router sent a#1, a#2 to r2 a moment ago
    replicas = [ReplicaView("r1"), ReplicaView("r2", sent={"a#1": 100, "a#2": 100}, queue_len=1)]
    assert ids(rank_replicas(PASSAGES, replicas)) == ["r2", "r1"]


def test_a_replica_too_far_behind_the_least_loaded_is_passed_over() -> None:
    policy = AffinityPolicy(max_queue_gap=4, min_overlap=0.2)
    hot = ReplicaView("r1", held=dict(PASSAGES), queue_len=5)
    cold = ReplicaView("r2", queue_len=0)
    # a gap of 5 > 4: the least loaded first, the holder after it
    assert ids(rank_replicas(PASSAGES, [hot, cold], policy)) == ["r2", "r1"]
    # a gap of exactly 4 is still within the guard: affinity wins
    assert ids(rank_replicas(PASSAGES, [ReplicaView("r1", held=dict(PASSAGES), queue_len=4), cold], policy)) == [
        "r1", "r2"]


def test_below_the_overlap_floor_the_least_loaded_wins() -> None:
    policy = AffinityPolicy(max_queue_gap=4, min_overlap=0.2)
    # r1 holds c#1 only: 50 of 300 tokens (17% < 20%), so its affinity is not worth the longer queue
    replicas = [ReplicaView("r1", held={"c#1": 50}, queue_len=2), ReplicaView("r2", queue_len=1)]
    assert ids(rank_replicas(PASSAGES, replicas, policy)) == ["r2", "r1"]
    # a question whose passages are a#1 and c#1: r1 holds 50 of 150 tokens (33%), so affinity holds
    assert ids(rank_replicas({"a#1": 100, "c#1": 50}, replicas, policy)) == ["r1", "r2"]


def test_a_request_without_passages_goes_to_the_least_loaded() -> None:
    replicas = [ReplicaView("r1", held=dict(PASSAGES), queue_len=3), ReplicaView("r2", queue_len=2)]
    assert ids(rank_replicas({}, replicas)) == ["r2", "r1"]


def test_a_dead_replica_is_never_ranked() -> None:
    # r1 held everything but died: Ray drops it from the candidates, and whatever it reported goes with it
    live = [ReplicaView("r2", held={"a#2": 100}), ReplicaView("r3")]
    assert ids(rank_replicas(PASSAGES, live)) == ["r2", "r3"]
    assert rank_replicas(PASSAGES, []) == []
