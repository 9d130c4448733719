"""A table chunk (a CSV file) reads as a table in Chromium: in the search results, with the query's words
marked inside their cells, in the passage panel opened from an answer's source, and on the document's page."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.ui.conftest import UiServer, ask_briefly, screenshots

CSV = "Planet,Moons,Ring system\nMars,2,none\nJupiter,95,faint\nSaturn,146,bright | icy\n"
HEADER = ["Planet", "Moons", "Ring system"]
ROWS = [["Mars", "2", "none"], ["Jupiter", "95", "faint"], ["Saturn", "146", "bright | icy"]]


@pytest.fixture(scope="module")
def moons(ui_server: UiServer, tmp_path_factory: pytest.TempPathFactory) -> UiServer:
    path = tmp_path_factory.mktemp("tables") / "moons.csv"
    path.write_text(CSV)
    assert ui_server.service.ingest_paths("moons", [path]).state == "done"
    return ui_server


def assert_table(table: Locator) -> None:
    expect(table.locator("thead th")).to_have_text(HEADER)
    expect(table.locator("tbody tr")).to_have_count(len(ROWS))
    for i, row in enumerate(ROWS):
        expect(table.locator("tbody tr").nth(i).locator("td")).to_have_text(row)


def test_a_table_passage_shows_as_a_table(moons: UiServer, open_page: Callable[..., Page], artifacts: Path) -> None:
    page = open_page("/search")
    page.select_option("#collection", "moons")
    page.fill("#query", "Saturn moons")
    page.press("#query", "Enter")
    text = page.locator(".hit").first.locator(".hit-text")
    assert_table(text.locator("table"))
    assert "---" not in text.inner_text()  # the rule became the header's border, not a row
    expect(text.locator("tbody td mark").first).to_have_text("Saturn")
    screenshots(page, artifacts, "search-table")

    page = open_page("/")
    ask_briefly(page, "moons", "How many moons has Saturn?")
    page.locator(".source-open").first.click()
    assert_table(page.locator("#passage-text table"))
    page.screenshot(path=artifacts / "passage-table.png")

    [document] = moons.service.list_documents("moons")
    page = open_page(f"/doc?id={document.doc_id}")
    assert_table(page.locator(".doc-passage .passage-text table"))
