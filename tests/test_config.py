"""Settings and the engine's configuration: one set of defaults, every engine setting reaching the engine."""

from __future__ import annotations

from dataclasses import fields

import pytest

from appliance.config import EngineConfig, Settings


def test_the_engine_defaults_are_the_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(f"APPLIANCE_{name.upper()}", raising=False)
    config, defaults = Settings().engine_config(), EngineConfig()
    assert {f.name: getattr(config, f.name) for f in fields(EngineConfig)} == \
           {f.name: getattr(defaults, f.name) for f in fields(EngineConfig)}


def test_every_engine_setting_reaches_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_KV_CACHE_MB", "77")
    monkeypatch.setenv("APPLIANCE_BLEND_RATIO", "0.5")
    monkeypatch.setenv("APPLIANCE_DOC_CACHE_KV_FORMAT", "model")
    monkeypatch.setenv("APPLIANCE_DOC_CACHE", "off")
    monkeypatch.setenv("APPLIANCE_CUDA_GRAPHS", "false")
    monkeypatch.setenv("APPLIANCE_COMPILED_DECODE", "true")  # the tests' servers run with it false (conftest)
    monkeypatch.setenv("APPLIANCE_FUSED_DECODE_ROWS", "7")
    config = Settings().engine_config()
    assert config.compiled_decode and config.fused_decode_rows == 7
    assert (config.kv_cache_mb, config.blend_ratio, config.doc_cache_kv_format) == (77, 0.5, "model")
    assert config.doc_cache == "off" and not config.enable_prefix_caching and config.decode_graphs == "off"
    shared = [f.name for f in fields(EngineConfig) if f.name in Settings.model_fields]
    assert len(shared) >= 20  # a field renamed on one side only would silently keep its default
