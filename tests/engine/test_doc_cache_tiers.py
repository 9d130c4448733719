"""The chunk tier's budget, pins and eviction order, and the disk tier's formats (no model needed)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from appliance.engine.doc_cache.disk import DiskTier
from appliance.engine.doc_cache.tier import ChunkEntry, ChunkTier


def entry(key: str, tokens: int = 8, doc: str = "d") -> ChunkEntry:
    gen = torch.Generator().manual_seed(hash(key) % 2**31)
    return ChunkEntry(key, torch.randn(2, tokens, 2, 16, generator=gen), torch.randn(2, tokens, 2, 16, generator=gen),
                      frozenset({doc}))


def test_eviction_never_frees_a_pinned_entry() -> None:
    size = entry("x").nbytes
    tier = ChunkTier(budget_bytes=2 * size)
    a, b = entry("a"), entry("b")
    tier.put(a)
    tier.put(b)
    tier.pin(a)
    tier.pin(b)
    tier.put(entry("c"))  # nothing can go: over budget until the pins are released
    assert set(tier.entries) == {"a", "b", "c"} and tier.bytes_used == 3 * size
    tier.unpin(b)
    assert set(tier.entries) == {"a", "c"} and tier.bytes_used == 2 * size
    for key in "defgh":
        tier.put(entry(key))
    assert "a" in tier.entries and tier.stats.evictions == 6
    assert tier.bytes_used <= 2 * size + size  # the pinned one may hold the tier one entry over


def test_frequently_used_entries_outlive_recent_one_offs() -> None:
    size = entry("x").nbytes
    tier = ChunkTier(budget_bytes=3 * size)
    tier.put(entry("hot"))
    for _ in range(5):
        assert tier.get("hot") is not None
    for key in ("c1", "c2", "c3", "c4"):
        tier.put(entry(key))
    assert "hot" in tier.entries  # plain LRU would have dropped it by now
    assert tier.get("c1") is None and tier.stats.misses == 1
    # aging: once enough newer entries are used as often, the old favourite goes too
    for _ in range(8):
        tier.get("c3")
        tier.get("c4")
    for key in ("c5", "c6", "c7"):
        tier.put(entry(key))
        tier.get(key)
    assert "hot" not in tier.entries


def test_invalidation_drops_every_entry_of_a_document() -> None:
    tier = ChunkTier(budget_bytes=10**9)
    tier.put(entry("a", doc="d1"))
    tier.put(entry("b", doc="d2"))
    tier.put(entry("c", doc="d1"))
    assert sorted(tier.invalidate("d1")) == ["a", "c"]
    assert set(tier.entries) == {"b"} and tier.bytes_used == entry("b").nbytes


def test_disk_tier_round_trips_and_int8_halves_the_bytes(tmp_path: Path) -> None:
    e = entry("k" * 32, tokens=64)
    e = ChunkEntry(e.key, e.k.bfloat16(), e.v.bfloat16(), frozenset({"doc-a"}))
    model = DiskTier(tmp_path / "model", "model", 10**9, torch.bfloat16)
    int8 = DiskTier(tmp_path / "int8", "int8", 10**9, torch.bfloat16)
    model.put(e)
    int8.put(e)
    exact = model.get(e.key)
    approx = int8.get(e.key)
    assert exact is not None and approx is not None
    assert torch.equal(exact.k, e.k) and torch.equal(exact.v, e.v) and exact.doc_ids == {"doc-a"}
    torch.testing.assert_close(approx.k.float(), e.k.float(), atol=0.03, rtol=0.02)
    assert int8.bytes_used < 0.6 * model.bytes_used
    assert DiskTier(tmp_path / "model", "model", 10**9, torch.bfloat16).bytes_used == model.bytes_used
    assert model.invalidate("doc-a") == 1 and model.get(e.key) is None and model.bytes_used == 0


def test_disk_tier_deletes_least_recently_used_files_over_budget(tmp_path: Path) -> None:
    one = entry("a" * 32)
    disk = DiskTier(tmp_path, "model", 10**9, torch.float32)
    disk.put(one)
    disk.budget_bytes = int(2.5 * disk.bytes_used)
    disk.put(entry("b" * 32))
    disk.get("a" * 32)  # refreshes a
    os.utime(disk.path("b" * 32), (1, 1))
    disk.put(entry("c" * 32))
    assert ("a" * 32) in disk and ("b" * 32) not in disk and ("c" * 32) in disk


def test_a_broken_or_vanishing_file_is_a_miss_never_an_error(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path, "model", 10**9, torch.float32)
    disk.put(entry("a" * 32, doc="d"))
    broken = disk.path("b" * 32)
    broken.parent.mkdir(exist_ok=True)
    broken.write_bytes(b"not a safetensors file")  # e.g. a disk that filled up under another writer
    assert disk.get("b" * 32) is None
    assert disk.invalidate("d") == 1 and disk.get("a" * 32) is None


def test_two_processes_invalidating_one_document_at_once_both_finish(tmp_path: Path) -> None:
    """Two replicas share a data dir: each deletes files the other is about to open (found in CI: the engine
    thread died on the file the other replica had just deleted)."""
    writer = DiskTier(tmp_path, "model", 10**9, torch.float32)
    for i in range(300):
        writer.put(entry(f"{i:032d}", tokens=1, doc="d"))
    tiers = [DiskTier(tmp_path, "model", 10**9, torch.float32) for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        removed = list(pool.map(lambda tier: tier.invalidate("d"), tiers))
    assert sum(removed) == 300 and not list(tmp_path.glob("*/*.safetensors"))
