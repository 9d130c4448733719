"""Block manager: prefix hashing, verification, refcounts and LRU eviction (no model needed)."""

from __future__ import annotations

from appliance.engine.block_manager import BlockManager
from appliance.engine.request import Request
from appliance.engine.sampling import SamplingParams


def _req(tokens: list[int], rid: str = "r") -> Request:
    return Request(rid, tokens, SamplingParams())


def _run_prefill(bm: BlockManager, req: Request) -> None:
    hits = bm.lookup_prefix(req)
    n = req.num_tokens - len(hits) * bm.block_size
    assert bm.allocate(req, n, hits)
    req.num_computed_tokens += n
    bm.commit_full_blocks(req)


def test_identical_prefix_is_shared_and_last_token_recomputed() -> None:
    bm = BlockManager(num_blocks=16, block_size=4, salt=b"s")
    a = _req(list(range(12)), "a")
    _run_prefill(bm, a)
    b = _req(list(range(12)), "b")
    hits = bm.lookup_prefix(b)
    assert hits == a.block_table[:2]  # 12 tokens = 3 full blocks, but the last token is always recomputed
    assert bm.allocate(b, 4, hits)
    assert b.num_computed_tokens == 8 and b.block_table[:2] == a.block_table[:2]
    assert b.block_table[2] != a.block_table[2]
    assert bm.ref_counts[a.block_table[0]] == 2


def test_hash_chain_depends_on_the_whole_prefix_and_salt() -> None:
    bm = BlockManager(num_blocks=16, block_size=4, salt=b"s")
    _run_prefill(bm, _req([1, 2, 3, 4, 5, 6, 7, 8, 9]))
    assert bm.lookup_prefix(_req([0, 2, 3, 4, 5, 6, 7, 8, 9])) == []  # first block differs
    assert len(bm.lookup_prefix(_req([1, 2, 3, 4, 0, 6, 7, 8, 9]))) == 1  # second differs
    other = BlockManager(num_blocks=16, block_size=4, salt=b"other-model")
    _run_prefill(other, _req([1, 2, 3, 4, 5, 6, 7, 8, 9]))
    assert len(other.cached) == 2 and not set(bm.cached) & set(other.cached)  # same tokens, other salt: no match


def test_hit_is_verified_against_token_ids() -> None:
    bm = BlockManager(num_blocks=8, block_size=2, salt=b"s")
    a = _req([5, 6, 7])
    _run_prefill(bm, a)
    bm.block_tokens[a.block_table[0]] = (9, 9)  # as if two different blocks collided on one hash
    assert bm.lookup_prefix(_req([5, 6, 7])) == []


def test_freed_blocks_stay_cached_until_evicted_lru() -> None:
    bm = BlockManager(num_blocks=4, block_size=2, salt=b"s")
    a = _req([1, 2, 3, 4, 5])  # 3 blocks
    _run_prefill(bm, a)
    bm.free(a)
    assert bm.num_free_blocks == 4 and len(bm.cached) == 2
    assert len(bm.lookup_prefix(_req([1, 2, 3, 4, 5]))) == 2
    b = _req([7, 8, 9, 10, 11])  # needs 3 blocks: the never-hashed one first, then the tail of `a`
    _run_prefill(bm, b)
    assert len(bm.lookup_prefix(_req([1, 2, 3, 4, 5]))) == 1  # a's tail block was evicted, its head survived
    assert not bm.allocate(_req([1] * 9, "c"), 9)  # not enough room: nothing changes
    assert bm.num_free_blocks == 1


def test_allocation_failure_changes_nothing() -> None:
    bm = BlockManager(num_blocks=2, block_size=4, salt=b"s")
    req = _req(list(range(12)))
    assert not bm.allocate(req, 12)
    assert req.block_table == [] and bm.num_free_blocks == 2


def test_resetting_the_prefix_cache_forgets_free_blocks_only() -> None:
    bm = BlockManager(num_blocks=16, block_size=4, salt=b"s")
    done = _req(list(range(12)), "done")
    _run_prefill(bm, done)
    bm.free(done)
    held = _req(list(range(100, 112)), "held")
    _run_prefill(bm, held)  # still running: its blocks stay cached
    assert bm.reset_prefix_cache() == 3
    assert bm.lookup_prefix(_req(list(range(12)), "again")) == []
    assert len(bm.lookup_prefix(_req(list(range(100, 112)), "same"))) == 2
