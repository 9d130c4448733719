"""A bench command's result: printed, kept as JSON when asked, and written into its section of BENCHMARKS.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from appliance.bench.report import publish


def test_publish_writes_json_and_only_its_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "BENCHMARKS.md").write_text("# Benchmarks\n\n## Engine\n\nkeep me\n\n## Speed\n\nold\n")
    console = Console(record=True, width=120)
    result = {"machine": {"cpu": "test"}, "figure": 1.5}
    publish(console, result, "new figures", "Speed", tmp_path / "out.json", docs=True)
    assert json.loads((tmp_path / "out.json").read_text()) == result
    text = (tmp_path / "docs" / "BENCHMARKS.md").read_text()
    assert "keep me" in text and "new figures" in text and "old" not in text
    assert "new figures" in console.export_text()
    publish(console, result, "other", "Speed", None, docs=False)
    assert "other" not in (tmp_path / "docs" / "BENCHMARKS.md").read_text()
