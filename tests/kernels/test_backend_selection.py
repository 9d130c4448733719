"""`auto` picks the best installed backend for the device; only the chosen backend's module is imported."""

from __future__ import annotations

import pytest
import torch

from kernels.base import auto_backend, available_backends, get_backend

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_cpu_is_always_torch_and_looks_for_no_gpu_library() -> None:
    def has_module(name: str) -> bool:
        raise AssertionError(f"looked for {name} on a CPU")

    assert auto_backend(CPU, has_module) == "torch"


@pytest.mark.parametrize("installed,expected", [({"flashinfer", "triton"}, "flashinfer"),
                                                ({"flashinfer"}, "flashinfer"), ({"triton"}, "triton"),
                                                (set(), "torch")])
def test_cuda_prefers_flashinfer_then_triton_then_torch(installed: set[str], expected: str) -> None:
    assert auto_backend(CUDA, installed.__contains__) == expected


def test_backends_load_by_import_path() -> None:
    loaded: list[str] = []

    class Module:
        TritonAttention = FlashInferAttention = TorchAttention = object

    def loader(name: str) -> type[Module]:
        loaded.append(name)
        return Module

    for name in ("triton", "flashinfer", "torch"):
        get_backend(name, CUDA, loader)
    assert loaded == ["kernels.triton_attn", "kernels.flashinfer_attn", "kernels.torch_ref"]
    assert {"torch", "triton", "flashinfer"} <= set(available_backends())
    assert get_backend("auto", CPU).name == "torch"
