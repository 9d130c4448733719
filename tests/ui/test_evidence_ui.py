"""An answer's evidence in Chromium, against the real appliance and model: once the answer is complete, the
passage sentence that best backs it is quoted above the answer's text, verbatim from one of its sources; it opens
that passage with the quote marked, and the saved turn (after a reload) shows it again."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.server.conftest import DOCS
from tests.ui.conftest import UiServer, ask_briefly, screenshots


@pytest.fixture(scope="module")
def planets(ui_server: UiServer, tmp_path_factory: pytest.TempPathFactory) -> UiServer:
    folder = tmp_path_factory.mktemp("planets")
    for name, text in DOCS["space"].items():
        (folder / name).write_text(text)
    assert ui_server.service.ingest_paths("planets", sorted(folder.iterdir())).state == "done"
    return ui_server


def test_the_evidence_is_quoted_above_the_answer_and_opens_its_passage(planets: UiServer,
                                                                      open_page: Callable[..., Page],
                                                                      artifacts: Path) -> None:
    page = open_page("/")
    turn = ask_briefly(page, "planets", "How high is Olympus Mons?")
    evidence = turn.locator(".evidence")
    expect(evidence).to_be_visible()
    above, answer = evidence.bounding_box(), turn.locator(".answer").bounding_box()
    assert above and answer and above["y"] + above["height"] <= answer["y"]  # above the answer's text

    service = planets.service
    shown = " ".join(turn.locator(".source-open").all_inner_texts())  # "[1] Mars [2] Jupiter"
    sources = [c.text for d in service.list_documents("planets") if d.title in shown
               for c in service.document_chunks(d.doc_id)]
    quote = evidence.locator(".evidence-quote").first.inner_text()
    assert quote.strip() and any(quote in text for text in sources), (quote, sources)

    evidence.locator(".evidence-open").first.click()
    expect(page.locator("#passage")).to_be_visible()
    expect(page.locator("#passage-text mark")).to_have_text([quote])
    screenshots(page, artifacts, "evidence")

    expect(page).to_have_url(re.compile(r"[?&]c="))  # the turn is saved
    page.reload()
    expect(page.locator(".turn .evidence .evidence-quote").first).to_have_text(quote)
