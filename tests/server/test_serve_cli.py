"""`appliance serve` refuses unsafe or impossible configurations with one clear line."""

from __future__ import annotations

import subprocess
import sys


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance.cli", "serve", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_refuses_public_bind_without_key(tmp_path) -> None:
    r = _serve("--host", "0.0.0.0", "--data-dir", str(tmp_path))
    assert r.returncode == 1
    assert "without an API key" in r.stderr and "Traceback" not in r.stderr


def test_missing_model_is_one_line(tmp_path) -> None:
    r = _serve("--model", str(tmp_path / "nope.gguf"), "--data-dir", str(tmp_path))
    assert r.returncode == 1
    assert "model not found" in r.stderr and "Traceback" not in r.stderr


def test_unsupported_model_file(tmp_path) -> None:
    bogus = tmp_path / "weights.bin"
    bogus.write_bytes(b"\0" * 16)
    r = _serve("--model", str(bogus), "--data-dir", str(tmp_path))
    assert r.returncode == 1 and "unsupported model file" in r.stderr
