"""The filter controls in Chromium: a tag filter narrows the search page's results and the passages a
question on the Q&A page is answered from; every other document stays out of both."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect

from tests.ui.conftest import UiServer, ask_briefly

NOTES = {"hr": "# Leave\n\nStaff get thirty days of paid leave a year, booked with the HR portal.",
         "eng": "# Leave\n\nEngineers on call get two days of leave after each release weekend."}


@pytest.fixture(scope="module")
def tagged(ui_server: UiServer, tmp_path_factory: pytest.TempPathFactory) -> UiServer:
    folder = tmp_path_factory.mktemp("tagged")
    for team, text in NOTES.items():
        path = folder / f"{team}-leave.md"
        path.write_text(text)
        assert ui_server.service.ingest_paths("tagged", [path], tags={"team": team}).state == "done"
    return ui_server


def test_a_tag_filter_narrows_search_results_and_an_answers_sources(
    tagged: UiServer, open_page: Callable[..., Page]
) -> None:
    page = open_page("/search")
    page.select_option("#collection", "tagged")
    page.fill("#query", "days of leave")
    page.press("#query", "Enter")
    expect(page.locator(".hit")).to_have_count(2)  # unfiltered: both teams' notes
    page.click(".filters summary")
    page.fill("#filter-tags", "team=hr")
    page.press("#query", "Enter")
    expect(page.locator(".hit")).to_have_count(1)
    expect(page.locator(".hit .hit-text")).to_contain_text("thirty days")

    page = open_page("/")
    turn = ask_briefly(page, "tagged", "How many days of leave do I get?", **{"filter-tags": "team=eng"})
    expect(turn.locator(".source")).to_have_count(1)
    expect(turn.locator(".source .snippet")).to_contain_text("Engineers on call")
