"""The web UI end to end in Chromium, against the real appliance and model: upload through the admin page, ask
and open a citation, search, reader keys, untrusted document text (uploaded as a zip), sign-in and error states."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.server.conftest import DOCS
from tests.ui.conftest import ADMIN_KEY, DESKTOP, UiServer, ask_briefly, screenshots, sign_in

BROKEN_PDF = "%PDF-1.4\nthis is not really a PDF\n"
UNTRUSTED = ('# Notes <script>window.__pwned = "title"</script>\n\nComets have long tails of dust and gas. '
             '<script>window.__pwned = 1</script> <img src=x onerror="window.__pwned = 2"> Comets orbit the Sun.')
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
OpenPage = Callable[..., Page]


def drop_files(page: Page, files: dict[str, str]) -> None:
    """Drag-and-drop files onto the admin page's drop zone, as a browser delivers a drop."""
    page.evaluate("""(files) => {
        const data = new DataTransfer();
        for (const [name, text] of files) data.items.add(new File([text], name));
        const zone = document.getElementById("dropzone");
        for (const type of ["dragenter", "dragover", "drop"]) {
            zone.dispatchEvent(new DragEvent(type, {dataTransfer: data, bubbles: true, cancelable: true}));
        }
    }""", list(files.items()))


def create_collection(page: Page, name: str) -> None:
    page.fill("#new-collection", name)
    page.click("#create-form button[type=submit]")
    expect(page.locator("#collections-table tbody th", has_text=name)).to_be_visible()
    expect(page.locator("#admin-collection")).to_have_value(name)


@pytest.fixture(scope="module")
def space(browser: Browser, ui_server: UiServer, artifacts: Path) -> Page:
    """The `space` collection uploaded through the admin page (drag-and-drop; one file is a broken PDF);
    returns that page once the job is done."""
    page = browser.new_context(viewport=DESKTOP).new_page()
    page.goto(f"{ui_server.url}/admin")
    sign_in(page, ADMIN_KEY)
    create_collection(page, "space")
    drop_files(page, {**DOCS["space"], "broken.pdf": BROKEN_PDF})
    expect(page.locator(".job")).to_have_attribute("data-state", "done", timeout=60_000)
    screenshots(page, artifacts, "admin")
    return page


def test_admin_upload_shows_progress_per_file_errors_and_documents(space: Page) -> None:
    job = space.locator(".job")
    expect(job.locator("progress")).to_have_js_property("value", 100)
    expect(job.locator(".status")).to_have_text("Done: 3 added, 0 unchanged, 1 failed")
    expect(job.locator(".file.failed")).to_contain_text("broken.pdf")
    expect(job.locator(".file.failed .error")).to_contain_text("PDF")
    rows = space.locator("#documents-table tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.locator("th")).to_have_text(["Jupiter", "Mars", "The Moon"])
    expect(rows.first.locator("td").nth(2)).to_have_text("1")  # chunks
    expect(space.locator("#collections-table tbody tr", has_text="space").locator("td").first).to_have_text("3")


def test_ask_streams_tokens_and_a_citation_opens_the_passage(space: Page, open_page: OpenPage,
                                                             ui_server: UiServer, artifacts: Path) -> None:
    page = open_page("/")
    page.select_option("#collection", "space")
    page.click(".options summary")
    page.fill("#k", "2")
    page.fill("#max-tokens", "48")
    page.evaluate("""() => {  // record the answer's length at every change while it streams
        window.__lengths = [];
        new MutationObserver(() => {
            const turn = document.querySelector(".turn");
            if (turn) window.__lengths.push([turn.dataset.state, turn.querySelector(".answer").textContent.length]);
        }).observe(document.getElementById("turns"), {childList: true, subtree: true, characterData: true});
    }""")
    page.fill("#question", "Where is Olympus Mons, and how high is it?")
    page.press("#question", "Enter")
    turn = page.locator(".turn")
    expect(turn).to_have_attribute("data-state", "done", timeout=60_000)
    streamed = [n for state, n in page.evaluate("window.__lengths") if state == "streaming" and n > 0]
    assert len(set(streamed)) >= 3 and streamed == sorted(streamed), streamed  # grew token by token
    expect(turn.locator(".facts")).to_contain_text("First token")
    expect(turn.locator(".facts")).to_contain_text("reused from cache")
    expect(turn.locator(".source")).to_have_count(2)
    turn.locator(".copy").click()
    expect(turn.locator(".copy")).to_have_text("Copied")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.strip() and copied.split()[:3] == turn.locator(".answer").inner_text().split()[:3]

    # the model's own marker if it wrote one, else the one the server's citation check inferred
    cited = turn.locator(".answer .cite.cited")
    marker = cited.first if cited.count() else turn.locator(".answer .cite.inferred").first
    marker.focus()  # keyboard: Enter opens the passage, Escape closes it and gives the focus back
    page.keyboard.press("Enter")
    passage = page.locator("#passage")
    expect(passage).to_be_focused()
    page.keyboard.press("Escape")
    expect(passage).to_be_hidden()
    expect(marker).to_be_focused()
    marker.click()
    expect(passage).to_be_visible()
    expect(page.locator("#passage-title")).to_contain_text("Mars")
    expect(page.locator("#passage-text mark").first).to_be_visible()
    marks = page.locator("#passage-text mark").all_inner_texts()  # the passage's sentences that back the answer
    assert all(m in DOCS["space"]["mars.md"] for m in marks), (turn.locator(".answer").inner_text(), marks)
    mars = next(d for d in ui_server.service.list_documents("space") if d.title == "Mars")
    assert f"id={mars.doc_id}" in (page.locator("#passage-link").get_attribute("href") or "")
    screenshots(page, artifacts, "ask")

    page.click("#passage-link")
    expect(page.locator(".doc-passage.target")).to_contain_text(marks[0])
    expect(page.locator("#doc-title")).to_have_text("Mars")
    screenshots(page, artifacts, "document")


def test_search_highlights_the_query_terms(space: Page, open_page: OpenPage, artifacts: Path) -> None:
    page = open_page("/search")
    page.select_option("#collection", "space")
    for mode in ("bm25", "hybrid"):
        page.select_option("#mode", mode)
        page.fill("#query", "great red storm")
        page.press("#query", "Enter")
        first = page.locator(".hit").first
        expect(first.locator(".hit-title")).to_have_text("Jupiter")
        marks = {m.lower() for m in first.locator(".hit-text mark").all_inner_texts()}
        assert marks == {"great", "red", "storm"}
        expect(first.locator(".meta")).to_contain_text("score")
    expect(page.locator("#summary")).to_contain_text("passages in")
    screenshots(page, artifacts, "search")


def test_reader_key_cannot_reach_admin_actions(space: Page, open_page: OpenPage, ui_server: UiServer,
                                               artifacts: Path) -> None:
    httpx.post(f"{ui_server.url}/api/admin/collections", json={"name": "private"}, headers=ADMIN)
    created = httpx.post(f"{ui_server.url}/api/admin/keys", json={"role": "reader", "collections": ["space"]},
                         headers=ADMIN)
    assert created.status_code == 201, created.text
    reader = created.json()["key"]

    page = open_page("/", key=reader)
    expect(page.locator("#account .who")).to_contain_text("Reader")
    expect(page.locator("nav a[href='/admin']")).to_be_hidden()
    expect(page.locator("#collection option")).to_have_count(1)  # the list is loaded after sign-in
    options = page.locator("#collection option").all_inner_texts()
    assert [o.split(" — ")[0] for o in options] == ["space"]  # never the collection it was not granted

    page.goto(f"{ui_server.url}/admin")
    expect(page.locator("#denied")).to_contain_text("needs an admin key")
    for control in ("#create-form", "#dropzone", "#file-input", "#collections-table", "#keys-table"):
        expect(page.locator(control)).to_have_count(0)
    status = page.evaluate("""async (key) => (await fetch("/api/admin/collections", {method: "POST",
        headers: {"Authorization": `Bearer ${key}`, "Content-Type": "application/json"},
        body: JSON.stringify({name: "sneaky"})})).status""", reader)
    assert status == 403
    screenshots(page, artifacts, "admin-reader")

    admin = open_page("/admin")  # the admin sees the key listed, never its secret
    key_row = admin.locator("#keys-table tbody tr", has_text=created.json()["key_id"])
    expect(key_row.locator("td").first).to_have_text("reader")
    expect(key_row.locator("td").nth(1)).to_have_text("space")
    assert reader not in admin.content()


def test_document_markup_renders_as_text_and_never_runs(space: Page, open_page: OpenPage, ui_server: UiServer,
                                                       artifacts: Path) -> None:
    page = open_page("/admin")
    create_collection(page, "untrusted")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("notes.md", UNTRUSTED)
    page.set_input_files("#file-input", {"name": "notes.zip", "mimeType": "application/zip",
                                         "buffer": archive.getvalue()})
    job = page.locator(".job").first
    expect(job).to_have_attribute("data-state", "done", timeout=60_000)
    expect(job.locator(".file.expanded")).to_contain_text("notes.zip")
    expect(job.locator(".file.done")).to_contain_text("notes.md")
    expect(page.locator("#documents-table tbody th")).to_have_text('Notes <script>window.__pwned = "title"</script>')

    def assert_inert(where: str) -> None:
        assert page.locator(f"{where} script, {where} img").count() == 0
        assert page.evaluate("window.__pwned") is None

    page.goto(f"{ui_server.url}/search")
    page.select_option("#collection", "untrusted")
    page.fill("#query", "comets tails")
    page.press("#query", "Enter")
    hit = page.locator(".hit").first
    expect(hit.locator(".hit-text")).to_contain_text("<script>window.__pwned = 1</script>")
    expect(hit.locator(".hit-text")).to_contain_text('<img src=x onerror="window.__pwned = 2">')
    expect(hit.locator(".hit-title")).to_have_text('Notes <script>window.__pwned = "title"</script>')
    assert_inert("#results")
    screenshots(page, artifacts, "search-untrusted")

    hit.locator(".hit-title a").click()
    expect(page.locator(".doc-passage.target")).to_contain_text("<script>window.__pwned = 1</script>")
    assert_inert("#passages")

    page.goto(f"{ui_server.url}/")
    ask_briefly(page, "untrusted", "What do comets have?")
    page.locator(".source-open").first.click()
    expect(page.locator("#passage-text")).to_contain_text("<script>window.__pwned = 1</script>")
    assert_inert("#main")


def test_sign_in_and_error_states(space: Page, open_page: OpenPage, ui_server: UiServer, artifacts: Path) -> None:
    page = open_page("/", key=None)
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#main")).to_be_hidden()
    screenshots(page, artifacts, "sign-in")
    sign_in(page, "not-a-key")
    expect(page.locator("#login [role=alert]")).to_contain_text("not accepted")
    assert "not-a-key" not in page.url
    sign_in(page, ADMIN_KEY)
    expect(page.locator("#main")).to_be_visible()
    assert ADMIN_KEY not in page.url

    httpx.post(f"{ui_server.url}/api/admin/collections", json={"name": "empty"}, headers=ADMIN)
    page.reload()
    page.select_option("#collection", "empty")
    expect(page.locator("#notice")).to_contain_text("has no documents yet")
    expect(page.locator("#ask-button")).to_be_disabled()

    # a busy server: the real 503 of a full engine queue, as the API sends it (tests/server covers producing it)
    page.route("**/api/ask", lambda route: route.fulfill(status=503, headers={"Retry-After": "1"}, json={
        "error": {"type": "overloaded", "message": "the engine queue is full"}}))
    page.select_option("#collection", "space")
    page.fill("#question", "Which planet is red?")
    page.press("#question", "Enter")
    expect(page.locator(".turn")).to_have_attribute("data-state", "error")
    expect(page.locator(".turn [role=alert]")).to_have_text(
        "The server is busy answering other questions. Try again in 1 s.")
