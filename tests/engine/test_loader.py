"""Loading models: Hugging Face folders (Llama, Qwen2) against transformers, the GGUF cache, clear errors."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from appliance.config import EngineConfig
from appliance.engine.engine import LLMEngine
from appliance.engine.loader import load_model, load_tokenizer, resolve_model_path, weights_fingerprint
from appliance.engine.sampling import SamplingParams
from appliance.errors import ModelLoadError


def _tiny_hf_folder(kind: str, dest: Path, cached_tokenizer_dir: Path) -> torch.nn.Module:
    """Save a small random transformers model of `kind` with the real SmolLM2 tokenizer; return it."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
                  rope_theta=10000.0)
    torch.manual_seed(0)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=False))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=True))
    model.eval().save_pretrained(dest, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(cached_tokenizer_dir / name, dest / name)
    return model


@pytest.fixture(scope="module")
def cached_dir(loaded_model, model_cache_dir: Path) -> Path:
    """The GGUF conversion cache written when the session's model was loaded."""
    (folder,) = [p for p in (model_cache_dir / "models").iterdir() if p.is_dir() and not p.name.startswith(".")]
    return folder


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_hf_folder_matches_transformers(kind: str, tmp_path: Path, cached_dir: Path) -> None:
    ref = _tiny_hf_folder(kind, tmp_path / kind, cached_dir)
    config = EngineConfig(dtype="float32", kv_cache_mb=16, int4_decode_tokens=0)  # the dense reference
    engine = LLMEngine(load_model(str(tmp_path / kind)), config)
    prompt = engine.tokenizer.encode("The quick brown fox jumps over the lazy dog")
    ours = engine.generate([prompt], SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))[0].token_ids
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(8):
            ids.append(int(ref(torch.tensor([ids])).logits[0, -1].argmax()))
    assert ours == ids[len(prompt):]


def test_gguf_conversion_is_cached(loaded_model, model_cache_dir: Path, cached_dir: Path) -> None:
    assert (cached_dir / "model.safetensors").is_file()
    again = load_model("default", model_cache_dir)
    assert again.source == cached_dir
    for name in ("model.embed_tokens.weight", "model.layers.3.self_attn.q_proj.weight"):
        assert torch.equal(again.weights[name], loaded_model.weights[name])
    text = "cache me 42"
    assert load_tokenizer("default", model_cache_dir).encode(text) == loaded_model.tokenizer.encode(text)


def test_cached_kv_is_keyed_by_the_weights_not_where_they_were_read(loaded_model, model_cache_dir: Path) -> None:
    """The first process on a data dir reads the GGUF file (and converts it), later ones its conversion cache:
    both must salt their KV alike, or whatever the first one encoded (`appliance warm`) is never found."""
    again = load_model("default", model_cache_dir)
    assert again.source != loaded_model.source and again.fingerprint == loaded_model.fingerprint
    config = EngineConfig(dtype="float32", kv_cache_mb=16, data_dir=model_cache_dir)
    assert LLMEngine(again, config).block_manager.salt == LLMEngine(loaded_model, config).block_manager.salt


def test_weights_fingerprint_follows_content_not_name(tmp_path: Path) -> None:
    data = bytearray(range(256)) * 40_000  # 10 MB: the samples do not cover every byte
    (tmp_path / "a.bin").write_bytes(data)
    (tmp_path / "b.bin").write_bytes(data)
    same = weights_fingerprint([tmp_path / "a.bin"])
    assert weights_fingerprint([tmp_path / "b.bin"]) == same
    data[len(data) // 2] ^= 1  # inside the middle sample
    (tmp_path / "b.bin").write_bytes(data)
    assert weights_fingerprint([tmp_path / "b.bin"]) != same
    (tmp_path / "c.bin").write_bytes(bytes(data) + b"x")
    assert weights_fingerprint([tmp_path / "c.bin"]) != same


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="model not found"):
        resolve_model_path(str(tmp_path / "missing.gguf"))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelLoadError, match="unsupported model file"):
        resolve_model_path(str(tmp_path / "notes.txt"))
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_model_path(str(tmp_path))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 12)
    with pytest.raises(ModelLoadError, match="cannot read GGUF"):
        load_model(str(broken))
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelLoadError, match="not supported"):
        load_model(str(tmp_path / "bert"))


def test_processes_starting_together_convert_the_model_once(tmp_path: Path, monkeypatch) -> None:
    """Replicas starting together on a fresh data dir: one converts the GGUF, the others wait for it and load
    what it wrote (they used to convert it each, and all but one failed to cache it)."""
    import appliance.engine.loader as loader

    conversions = []
    convert = loader._load_gguf

    def counted(*args):
        conversions.append(args[0])
        return convert(*args)

    monkeypatch.setattr(loader, "_load_gguf", counted)
    with ThreadPoolExecutor(3) as pool:
        loaded = list(pool.map(lambda _: load_model("default", tmp_path), range(3)))
    assert len(conversions) == 1
    assert all(torch.equal(m.weights["model.norm.weight"], loaded[0].weights["model.norm.weight"]) for m in loaded)
    assert [p.name for p in (tmp_path / "models").iterdir() if p.name.startswith(".tmp-")] == []


def test_a_conversion_held_up_elsewhere_is_waited_for_only_so_long(tmp_path: Path, monkeypatch) -> None:
    """Past CONVERSION_WAIT_S the process converts the model itself, without caching it (the other writes it)."""
    from filelock import FileLock

    import appliance.engine.loader as loader

    monkeypatch.setattr(loader, "CONVERSION_WAIT_S", 0.2)
    cache = loader._cache_dir(resolve_model_path("default"), tmp_path)
    cache.parent.mkdir(parents=True)
    with FileLock(str(cache.parent / f"{cache.name}.lock")):  # another process converting, for ever
        loaded = load_model("default", tmp_path)
    assert loaded.weights and not cache.exists()
