"""The fused CPU decode layer (`decode_layer.cpp`, with `quant_matmul.h` and `simd.h`), compiled on first use
with the machine's own C++ compiler.

`build(cache_dir)` compiles the extension for this CPU (`-march=native`: AVX512-VNNI where the CPU has it, a
portable loop elsewhere) into a folder named by the source's hash, the CPU's flags and the torch version, so a
data dir moved to another machine or another torch rebuilds instead of loading code that cannot run there. A
second call (or a second process) with the same folder loads the built library in well under a second.
"""

from __future__ import annotations

import functools
import hashlib
import platform
from pathlib import Path
from types import ModuleType

import torch

SOURCE = Path(__file__).with_name("decode_layer.cpp")
HEADERS = ("attention.h", "quant_matmul.h", "rotary.h", "simd.h")  # what SOURCE includes from this folder


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def build_key() -> str:
    """What the compiled library depends on: the sources, the CPU's instruction sets, torch's version."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    for header in HEADERS:
        digest.update(SOURCE.with_name(header).read_bytes())
    digest.update(_cpu_flags().encode())
    digest.update(torch.__version__.encode())
    return digest.hexdigest()[:16]


@functools.cache
def build(cache_dir: Path, portable: bool = False) -> ModuleType:
    """The compiled extension (built into `cache_dir/cpu_decode-<key>` unless already there). `portable` builds
    the loop every x86-64 CPU runs instead of the one for this CPU's instruction sets (tests check both).
    Raises what the compiler raises when it cannot be built (no C++ compiler, say)."""
    from torch.utils.cpp_extension import load

    key = build_key() + ("-portable" if portable else "")
    folder = cache_dir / f"cpu_decode-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    target = "-march=x86-64-v2" if portable else "-march=native"
    return load(name=f"appliance_cpu_decode_{key.replace('-', '_')}", sources=[str(SOURCE)],
                build_directory=str(folder), extra_cflags=["-O3", target, "-fopenmp"], extra_ldflags=["-fopenmp"])


TILE = 16  # output rows per tile of the kernel's weight layout (Q4Linear in decode_layer.cpp)


def tile_q4(q: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 4-bit weight, w[n, k] = q[n, k] * d[n, k // 32] + m[n, k // 32], in the kernel's layout.

    q: [N, K] uint8 codes 0..15 (N a multiple of 16, K of 32); d, m: [N, K // 32] float ->
    packed [N, K // 2] uint8, d and m [N // 16, K // 32, 16] float32. By tiles of 16 output rows, each group
    of 32 inputs is 4 chunks of 64 bytes; in chunk c, bytes 4n..4n+3 hold the tile's row n's inputs
    8c..8c+3 in their low nibbles and 8c+4..8c+7 in their high nibbles."""
    n, k = _tiles(q)
    codes = q.view(n // TILE, TILE, k // 32, 4, 8)  # [tiles, row, group, chunk, 8 inputs]
    pairs = codes[..., :4] | (codes[..., 4:] << 4)  # [tiles, row, group, chunk, 4 bytes]
    packed = pairs.permute(0, 2, 3, 1, 4).contiguous().view(n, k // 2)  # [tiles, group, chunk, row, byte]
    return packed, _tiled_groups(d), _tiled_groups(m)


def tile_q8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A weight quantized as the GGUF's Q8_0 does (per group of 32 inputs: d = max |w| / 127, q = round(w / d);
    a Q8_0 weight's own dequantized values come back exactly), in the kernel's layout.

    w: [N, K] float (N a multiple of 16, K of 32) -> packed [N, K] int8, d and corr [N // 16, K // 32, 16]
    float32, corr = 128 * the group's sum of q. By tiles of 16 output rows, each group of 32 inputs is 8 chunks
    of 64 bytes; in chunk c, bytes 4n..4n+3 hold the tile's row n's inputs 4c..4c+3."""
    n, k = _tiles(w)
    groups = w.float().view(n, k // 32, 32)
    d = groups.abs().amax(-1) / 127  # [N, K // 32]
    q = torch.where(d[..., None] > 0, groups / d[..., None].clamp(min=1e-30), 0).round().to(torch.int8)
    codes = q.view(n // TILE, TILE, k // 32, 8, 4)  # [tiles, row, group, chunk, 4 inputs]
    packed = codes.permute(0, 2, 3, 1, 4).contiguous().view(n, k)  # [tiles, group, chunk, row, input]
    return packed, _tiled_groups(d), _tiled_groups(128 * q.int().sum(-1))


def _tiles(w: torch.Tensor) -> tuple[int, int]:
    """w's shape [N, K]; raises ValueError unless its rows tile by 16 and its columns group by 32."""
    n, k = w.shape
    if n % TILE or k % 32:
        raise ValueError(f"a [{n}, {k}] weight does not tile: rows must be a multiple of 16, columns of 32")
    return n, k


def _tiled_groups(t: torch.Tensor) -> torch.Tensor:
    """Per-group values [N, K // 32] -> [N // 16, K // 32, 16] float32: a tile's 16 rows side by side per group."""
    n, groups = t.shape
    return t.float().reshape(n // TILE, TILE, groups).transpose(1, 2).contiguous()
