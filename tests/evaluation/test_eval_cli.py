"""`appliance eval`: a golden set over python3.11-doc pages, a baseline, an equal run and a real regression.

The end-to-end test runs the command in its own process on the real embedded model (greedy, 32 tokens,
k=2); bad input is checked in this process (it fails before any model loads).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appliance.cli import app
from retrieval.service import RetrievalService

DOCS = Path("/usr/share/doc/python3.11/html/library")
PAGES = ("colorsys.html", "keyword.html", "tty.html", "getpass.html", "pwd.html")
GOLDEN = [
    {"question": "Which module converts colors between RGB and HLS?", "collection": "pydoc",
     "expected_answer": "colorsys", "expected_pages": ["colorsys.html"]},
    {"question": "Which function tells whether a string is a Python keyword?",
     "expected_answer": "keyword.iskeyword", "expected_pages": ["library/keyword.html"], "rating": "up"},
    {"question": "How do I convert a color from RGB to HSV coordinates?", "expected_answer": None,
     "expected_pages": ["colorsys.html"]},
    {"question": "Not for this collection", "collection": "other"},
]


@pytest.fixture(scope="module")
def pydoc_data(tmp_path_factory: pytest.TempPathFactory, loaded_model, model_cache_dir: Path) -> Path:
    """A data dir with five small library pages in collection "pydoc", reusing the session's converted model."""
    if not all((DOCS / page).is_file() for page in PAGES):
        pytest.skip("needs Debian's python3.11-doc")
    data = tmp_path_factory.mktemp("eval") / "data"
    service = RetrievalService.open(data, loaded_model.tokenizer, chunk_tokens=256)
    try:
        assert service.ingest_paths("pydoc", [DOCS / page for page in PAGES]).state == "done"
    finally:
        service.close()
    (data / "models").symlink_to(model_cache_dir / "models", target_is_directory=True)
    return data


def _eval(data: Path, *args: str) -> subprocess.CompletedProcess:
    # one engine thread: beside other busy processes on a small machine, two threads run ~4x slower, not faster
    env = {**os.environ, "APPLIANCE_DEVICE": "cpu", "APPLIANCE_KV_CACHE_MB": "64", "HF_HUB_OFFLINE": "1",
           "APPLIANCE_THREADS": "1", "COLUMNS": "200", "APPLIANCE_DATA_DIR": str(data)}
    return subprocess.run([sys.executable, "-m", "appliance.cli", "eval", "--collection", "pydoc", "--k", "2",
                           "--max-tokens", "32", *args], capture_output=True, text=True, timeout=180, env=env)


def _write(path: Path, lines: list[object]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_baseline_equal_run_and_a_regression(pydoc_data: Path, tmp_path: Path) -> None:
    golden = _write(tmp_path / "golden.jsonl", GOLDEN)
    base = tmp_path / "base.json"
    r = _eval(pydoc_data, "--golden", str(golden), "--json", "--out", str(base))
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert json.loads(base.read_text()) == result
    assert result["settings"] | {"golden": ""} == {"collection": "pydoc", "golden": "", "k": 2, "max_tokens": 32,
                                                   "model": result["settings"]["model"], "doc_cache": "exact"}
    assert result["skipped"] == 1 and [q["line"] for q in result["questions"]] == [1, 2, 3]
    metrics = result["metrics"]
    assert metrics["questions"] == 3 and metrics["recall_questions"] == 3 and metrics["accuracy_questions"] == 2
    assert metrics["recall"] == 1.0  # each question finds its page among two passages
    assert all(len(q["retrieved_chunk_ids"]) == 2 and q["answer"] for q in result["questions"])
    assert result["questions"][2]["right"] is None and metrics["ttft_p50_ms"] > 0

    # the same run again: no regression (TTFT on a shared CPU is noise here: its gate is tested in test_scoring)
    r = _eval(pydoc_data, "--golden", str(golden), "--baseline", str(base), "--ttft-tolerance", "100")
    assert r.returncode == 0, r.stderr
    assert "no regression" in r.stderr and "recall@2 (3 questions)" in r.stdout and "Metrics" in r.stdout

    # the page that answers two of the three questions leaves the collection: recall drops from 1.0 to 1/3
    service = RetrievalService.open(pydoc_data, _tokenizer(pydoc_data))
    try:
        (doc,) = [d for d in service.list_documents("pydoc") if Path(d.source).name == "colorsys.html"]
        service.delete_document("pydoc", doc.doc_id)
    finally:
        service.close()
    before = base.read_text()
    r = _eval(pydoc_data, "--golden", str(golden), "--baseline", str(base), "--ttft-tolerance", "100", "--json",
              "--out", str(base))
    assert r.returncode == 1, r.stderr
    assert "regressed" in r.stderr and "recall: 1.000 -> 0.333" in r.stderr and "Traceback" not in r.stderr
    assert "was not overwritten" in r.stderr and base.read_text() == before
    regressions = json.loads(r.stdout)["comparison"]["regressions"]
    assert regressions[0] == {"metric": "recall", "old": 1.0, "new": pytest.approx(1 / 3),
                              "allowed": "drop over the tolerance of 0.05"}


def _tokenizer(data: Path):
    from appliance.engine.loader import load_tokenizer

    return load_tokenizer("default", data_dir=data)


def _invoke(tmp_path: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["eval", "--collection", "pydoc", "--data-dir", str(tmp_path / "data"), *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, " ".join(result.stderr.split())


@pytest.mark.parametrize(("lines", "message"), [
    ([GOLDEN[0], "{not json"], "golden.jsonl:2: not JSON"),
    ([GOLDEN[0], "", {"expected_answer": "x"}], "golden.jsonl:3: needs a non-empty string \"question\""),
    (["[1, 2]"], "golden.jsonl:1: not a JSON object"),
    ([{"question": "q", "expected_chunk_ids": ["3"]}], "golden.jsonl:1: \"expected_chunk_ids\" must be a list"),
    ([], "no question for collection 'pydoc'"),
    ([GOLDEN[3]], "no question for collection 'pydoc' (1 lines are for other collections)"),
])
def test_a_bad_golden_file_exits_2_with_its_line(tmp_path: Path, lines: list[object], message: str) -> None:
    golden = _write(tmp_path / "golden.jsonl", lines)
    out = tmp_path / "out.json"
    code, stderr = _invoke(tmp_path, "--golden", str(golden), "--out", str(out))
    assert code == 2 and message in stderr and not out.exists()


def test_missing_files_and_an_unknown_collection_exit_2(tmp_path: Path) -> None:
    code, stderr = _invoke(tmp_path, "--golden", str(tmp_path / "nope.jsonl"))
    assert code == 2 and "no such golden file" in stderr
    golden = _write(tmp_path / "golden.jsonl", GOLDEN[:1])
    code, stderr = _invoke(tmp_path, "--golden", str(golden), "--baseline", str(tmp_path / "nope.json"))
    assert code == 2 and "no such baseline file" in stderr
    (tmp_path / "bad.json").write_text('{"metrics": {"recall": 1}}')
    code, stderr = _invoke(tmp_path, "--golden", str(golden), "--baseline", str(tmp_path / "bad.json"))
    assert code == 2 and "not the JSON of an earlier" in stderr
    code, stderr = _invoke(tmp_path, "--golden", str(golden), "--out", str(tmp_path / "no" / "out.json"))
    assert code == 2 and "its folder does not exist" in stderr
    code, stderr = _invoke(tmp_path, "--golden", str(golden))
    assert code == 2 and "collection 'pydoc' does not exist" in stderr
