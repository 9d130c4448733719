"""A warm plans against the disk budget up front: it writes only what fits and never evicts what it wrote."""

from __future__ import annotations

from pathlib import Path

from appliance.commands.warm import describe_plan
from appliance.engine.doc_cache.capacity import FILE_OVERHEAD_BYTES, plan_warm
from appliance.engine.doc_cache.disk import disk_bytes_per_token


def test_plan_takes_uncached_passages_in_order_while_they_fit() -> None:
    plan = plan_warm([10, 20, 5, 30, 5], [False, True, False, False, False], bytes_per_token=100,
                     room_bytes=2000 + 3 * FILE_OVERHEAD_BYTES)
    assert plan.chosen == [0, 2, 4]  # 30 tokens (index 3) would not fit after 0 and 2; 4 still does
    assert plan.cached == 1 and plan.left_out == 1 and not plan.fits
    assert plan.need_bytes == 5000 + 4 * FILE_OVERHEAD_BYTES and plan.tokens == 70
    text = describe_plan(plan)
    assert "encoding the 3 uncached passages that fit" in text and "other 1 are encoded when" in text
    assert "APPLIANCE_DOC_CACHE_DISK_MB" in text and "KV_FORMAT" not in text  # int8 is the default already
    assert "APPLIANCE_DOC_CACHE_KV_FORMAT=int8" in describe_plan(plan, "model")
    assert "that fit" not in describe_plan(plan_warm([10], [False], 100, 10**6))


def test_int8_files_take_about_half_of_bfloat16(loaded_model) -> None:
    config = loaded_model.config  # the embedded model: 30 layers, 3 KV heads of 64
    assert disk_bytes_per_token("model", config, 2) == 30 * 2 * 3 * 64 * 2  # 23,040 bytes a token
    assert disk_bytes_per_token("int8", config, 2) == 30 * 2 * 3 * (64 + 2)


def test_a_warm_larger_than_the_budget_writes_what_fits_and_evicts_nothing(make_engine, tmp_path: Path) -> None:
    # Model-dtype files (float32: 46,080 bytes a token) make the arithmetic plain.
    engine = make_engine(data_dir=tmp_path, doc_cache_disk_mb=1, doc_cache_kv_format="model")
    prefix = [1, 2, 3]
    chunks = [[100 + 10 * i + j for j in range(8)] for i in range(5)]  # 8 tokens: ~0.37 MB a file
    plan = engine.warm_plan(prefix, chunks)
    assert plan.chosen == [0, 1] and plan.left_out == 3
    engine.warm(prefix, [(chunks[i], f"doc-{i}") for i in plan.chosen])
    while engine.has_unfinished():
        engine.step()
    disk = engine.doc_cache.disk
    assert disk is not None and len(list(disk.root.glob("*/*.safetensors"))) == 2
    assert disk.bytes_used <= disk.budget_bytes
    assert engine.warm_plan(prefix, chunks).chosen == [] and engine.warm_plan(prefix, chunks).cached == 2
