"""`appliance demo`: a collection of python3.11-doc pages, pre-encoded, and where to ask what."""

from __future__ import annotations

from pathlib import Path

from appliance.commands.demo import PAGES
from retrieval.store import Store
from tests.engine.test_warm_cli import _cli

PAGE = "<html><head><title>{name} — docs</title></head><body><h1>{name}</h1><p>{text}</p></body></html>"


def test_demo_ingests_the_selected_pages_and_warms_them(tmp_path: Path) -> None:
    corpus = tmp_path / "library"
    corpus.mkdir()
    (corpus / f"{PAGES[0]}.html").write_text(PAGE.format(name=PAGES[0], text="Encode objects as JSON text."))
    (corpus / f"{PAGES[1]}.html").write_text(PAGE.format(name=PAGES[1], text="Read and write CSV files."))
    (corpus / "not-chosen.html").write_text(PAGE.format(name="other", text="Never ingested."))
    data = tmp_path / "data"
    r = _cli(data, "demo", "--corpus", str(corpus))
    assert r.returncode == 0, r.stderr
    assert "2 ingested" in r.stdout and "2 chunks, 2 encoded now" in r.stdout
    assert "http://127.0.0.1:8000/" in r.stdout and "sorted list" in r.stdout
    store = Store(data / "retrieval.sqlite3")
    sources = {Path(d.source).name for d in store.list_documents("demo")}
    store.close()
    assert sources == {f"{PAGES[0]}.html", f"{PAGES[1]}.html"}


def test_demo_without_the_corpus_says_what_to_install(tmp_path: Path) -> None:
    r = _cli(tmp_path / "data", "demo", "--corpus", str(tmp_path / "missing"))
    assert r.returncode == 1 and "python3.11-doc" in r.stderr and "Traceback" not in r.stderr
