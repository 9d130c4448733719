"""Conversations in the Q&A page, in Chromium against the real appliance and model: a follow-up in the same
thread (its rewritten query shown), a reload that brings the thread and the list back from the API, rating an
answer, renaming, deleting and switching conversations, and the passages of a deleted document."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from playwright.sync_api import Locator, Page, expect

from tests.server.conftest import DOCS
from tests.ui.conftest import ADMIN_KEY, UiServer, screenshots

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
ANSWER_S = 60_000
FIRST = "Where is Olympus Mons, and how high is it?"  # answered with a citation (tests/ui/test_ui.py)
FOLLOW_UP = "What gives that planet its colour?"
OpenPage = Callable[..., Page]


@pytest.fixture(scope="module")
def collections(ui_server: UiServer, tmp_path_factory: pytest.TempPathFactory) -> UiServer:
    """`space` and `kitchen` (tests/server's documents), ingested straight into the served appliance."""
    root = tmp_path_factory.mktemp("conversation-docs")
    for collection in ("space", "kitchen"):
        paths = []
        for name, text in DOCS[collection].items():
            (root / name).write_text(text)
            paths.append(root / name)
        assert ui_server.service.ingest_paths(collection, paths).state == "done"
    return ui_server


def api(server: UiServer, method: str, path: str, **kwargs: object) -> httpx.Response:
    return httpx.request(method, server.url + path, headers=ADMIN, timeout=60, **kwargs)  # type: ignore[arg-type]


def saved_conversation(server: UiServer, question: str, collection: str) -> str:
    """A conversation of one short turn, asked through the API with the page's key; its id."""
    response = api(server, "POST", "/api/ask", json={"question": question, "collection": collection, "k": 2,
                                                     "max_tokens": 8, "stream": False})
    assert response.status_code == 200, response.text
    return response.json()["conversation_id"]


def ask(page: Page, question: str) -> Locator:
    """Ask in the page's thread; the new turn once its answer is done."""
    before = page.locator(".turn").count()
    page.fill("#question", question)
    page.press("#question", "Enter")
    turn = page.locator(".turn").nth(before)
    expect(turn).to_have_attribute("data-state", "done", timeout=ANSWER_S)
    return turn


def shown_conversation(page: Page) -> str | None:
    return parse_qs(urlparse(page.url).query).get("c", [None])[0]


def item(page: Page, conversation_id: str) -> Locator:
    """The list's item of a conversation (whatever it shows: its link, the rename form, the confirmation)."""
    return page.locator(f'.conversation-item[data-id="{conversation_id}"]')


def test_a_follow_up_continues_the_thread_and_a_reload_brings_it_back(collections: UiServer, open_page: OpenPage,
                                                                       artifacts: Path) -> None:
    page = open_page("/")
    expect(page.locator("#thread-title")).to_have_text("New conversation")
    page.select_option("#collection", "space")
    page.click(".options summary")
    page.fill("#k", "2")
    page.fill("#max-tokens", "48")
    first = ask(page, FIRST)
    expect(first).to_have_attribute("data-turn", "1")
    expect(first.locator(".searched")).to_be_hidden()  # a first question is searched for as asked
    conversation_id = shown_conversation(page)
    assert conversation_id, page.url
    current = page.locator(".conversation-open[aria-current]")
    expect(current).to_have_text(FIRST)
    expect(current).to_have_attribute("data-id", conversation_id)

    page.fill("#max-tokens", "24")
    second = ask(page, FOLLOW_UP)
    expect(second).to_have_attribute("data-turn", "2")  # the done event's turn: the same conversation
    assert shown_conversation(page) == conversation_id
    saved = api(collections, "GET", f"/api/conversations/{conversation_id}").json()
    assert [t["question"] for t in saved["turns"]] == [FIRST, FOLLOW_UP]
    rewritten = saved["turns"][1]["retrieval_query"]
    assert saved["turns"][1]["rewrite"] in ("model", "fallback") and rewritten != FOLLOW_UP, rewritten
    expect(second.locator(".searched")).to_have_text(f"Searched for: {rewritten}")
    expect(second.locator(".facts")).to_contain_text("follow-up rewritten in")
    expect(page.locator(".conversation-item", has=current)).to_contain_text("2 turns")
    answers = page.locator(".turn .answer").all_inner_texts()
    screenshots(page, artifacts, "conversation-follow-up")

    page.reload()  # the thread and the list come back from the API, rendered as the live turns were
    turns = page.locator(".turn")
    expect(turns).to_have_count(2)
    expect(turns.locator(".question q")).to_have_text([FIRST, FOLLOW_UP])
    assert page.locator(".turn .answer").all_inner_texts() == answers
    expect(turns.nth(1).locator(".searched")).to_have_text(f"Searched for: {rewritten}")
    expect(turns.nth(0).locator(".searched")).to_be_hidden()
    expect(turns.nth(0).locator(".facts")).to_contain_text("reused from cache")
    expect(turns.nth(1)).to_have_attribute("data-turn", "2")
    expect(page.locator("#thread-title")).to_have_text(FIRST)
    expect(page.locator(".conversation-open[aria-current]")).to_have_attribute("data-id", conversation_id)
    expect(page.locator("#collection")).to_have_value("space")

    # a citation of a reloaded turn (the model's marker, else one the citation check inferred) opens its passage
    cited = turns.nth(0).locator(".answer .cite.cited")
    marker = cited.first if cited.count() else turns.nth(0).locator(".answer .cite.inferred").first
    n = marker.get_attribute("data-n")
    marker.click()
    expect(page.locator("#passage")).to_be_focused()
    expect(page.locator("#passage-title")).to_have_text(re.compile(rf"^\[{n}\] "))
    source = next(s for s in saved["turns"][0]["sources"] if str(s["n"]) == n)
    expect(page.locator("#passage-text")).to_have_text(source["text"])
    assert f"id={source['doc_id']}" in (page.locator("#passage-link").get_attribute("href") or "")
    screenshots(page, artifacts, "conversation-reloaded")
    page.keyboard.press("Escape")
    expect(marker).to_be_focused()

    # rate the first answer down with a comment; a reload shows the saved rating
    rating = turns.nth(0).locator(".feedback")
    rating.locator("button.rate.down").click()
    expect(rating.locator("textarea")).to_be_focused()  # "not helpful" asks what was wrong
    rating.locator("textarea").fill("It should say it is on Mars.")
    rating.locator("button[type=submit]").click()
    expect(rating.locator(".feedback-comment q")).to_have_text("It should say it is on Mars.")
    page.reload()
    rating = page.locator(".turn").nth(0).locator(".feedback")
    expect(rating.locator("button.rate.down")).to_have_attribute("aria-pressed", "true")
    expect(rating.locator("button.rate.up")).to_have_attribute("aria-pressed", "false")
    expect(rating.locator(".feedback-comment q")).to_have_text("It should say it is on Mars.")
    expect(page.locator(".turn").nth(1).locator("button.rate[aria-pressed=true]")).to_have_count(0)
    screenshots(page, artifacts, "conversation-feedback")
    feedback = api(collections, "GET", f"/api/conversations/{conversation_id}").json()["turns"][0]["feedback"]
    assert (feedback["rating"], feedback["comment"]) == ("down", "It should say it is on Mars.")

    rating.locator("button.rate.up").click()  # a new rating replaces the old one, comment included
    expect(rating.locator("button.rate.up")).to_have_attribute("aria-pressed", "true")
    expect(rating.locator("button.rate.down")).to_have_attribute("aria-pressed", "false")
    expect(rating.locator(".feedback-comment")).to_have_text("Add a comment")
    feedback = api(collections, "GET", f"/api/conversations/{conversation_id}").json()["turns"][0]["feedback"]
    assert (feedback["rating"], feedback["comment"]) == ("up", None)


def test_switch_rename_and_delete_from_the_list(collections: UiServer, open_page: OpenPage,
                                                artifacts: Path) -> None:
    jupiter = saved_conversation(collections, "Which planet has the Great Red Spot?", "space")
    pasta = saved_conversation(collections, "How long does fresh pasta cook?", "kitchen")
    page = open_page("/")
    expect(page.locator(".conversation-open").first).to_have_text("How long does fresh pasta cook?")  # newest first

    item(page, jupiter).locator(".conversation-open").click()
    expect(page.locator(".turn .question q")).to_have_text("Which planet has the Great Red Spot?")
    assert shown_conversation(page) == jupiter
    expect(page.locator("#collection")).to_have_value("space")
    item(page, pasta).locator(".conversation-open").click()  # switching loads the other one
    expect(page.locator(".turn .question q")).to_have_text("How long does fresh pasta cook?")
    expect(page.locator("#collection")).to_have_value("kitchen")
    expect(page.locator("#thread-meta")).to_have_text("in kitchen")
    assert shown_conversation(page) == pasta
    page.go_back()  # history: each opened conversation is an entry
    expect(page.locator(".turn .question q")).to_have_text("Which planet has the Great Red Spot?")
    page.go_forward()
    expect(page.locator(".turn .question q")).to_have_text("How long does fresh pasta cook?")

    pasta_item = item(page, pasta)
    pasta_item.locator("button.rename").click()
    expect(pasta_item.locator("input")).to_be_focused()
    page.keyboard.press("Escape")  # cancel: nothing changes
    expect(pasta_item.locator("button.rename")).to_be_focused()
    pasta_item.locator("button.rename").click()
    pasta_item.locator("input").fill("Pasta timing")
    page.keyboard.press("Enter")
    expect(page.locator(".conversation-open[aria-current]")).to_have_text("Pasta timing")
    expect(page.locator("#thread-title")).to_have_text("Pasta timing")
    assert api(collections, "GET", f"/api/conversations/{pasta}").json()["title"] == "Pasta timing"

    renamed = item(page, pasta)
    renamed.locator("button.delete").click()
    expect(renamed.locator(".confirm")).to_contain_text("Delete “Pasta timing” and its 1 turn?")
    expect(renamed.locator(".confirm button", has_text="Cancel")).to_be_focused()
    screenshots(page, artifacts, "conversation-delete")
    renamed.locator(".confirm button", has_text="Cancel").click()
    expect(renamed.locator(".conversation-open")).to_have_text("Pasta timing")
    renamed.locator("button.delete").click()
    renamed.locator("button.confirm-delete").click()
    expect(item(page, pasta)).to_have_count(0)
    expect(page.locator("#conversations-status")).to_have_text("Deleted “Pasta timing”.")
    assert api(collections, "GET", f"/api/conversations/{pasta}").status_code == 404
    expect(page.locator(".turn")).to_have_count(0)  # it was the open one: the thread starts over
    expect(page.locator("#thread-title")).to_have_text("New conversation")
    assert shown_conversation(page) is None

    page.goto(f"{collections.url}/?c={pasta}")  # a link to a deleted conversation says so
    expect(page.locator("#thread-status [role=alert]")).to_contain_text("does not exist")
    assert shown_conversation(page) is None


def test_another_collection_starts_a_new_conversation_and_deleted_documents_stay_readable(
        collections: UiServer, open_page: OpenPage, artifacts: Path) -> None:
    bread_question = "Why does sourdough bread rise?"
    bread = saved_conversation(collections, bread_question, "kitchen")
    turn = api(collections, "GET", f"/api/conversations/{bread}").json()["turns"][0]
    doc = next(d for d in collections.service.list_documents("kitchen") if d.title == "Bread")
    assert any(s["doc_id"] == doc.doc_id for s in turn["sources"])
    deleted = api(collections, "DELETE", f"/api/admin/collections/kitchen/documents/{doc.doc_id}")
    assert deleted.status_code == 200, deleted.text

    page = open_page(f"/?c={bread}")
    source = page.locator(".source.gone")
    expect(source).to_have_count(1)
    expect(source.locator(".badge.gone")).to_have_text("document deleted")
    source.locator(".source-open").click()
    expect(page.locator("#passage-note")).to_contain_text("deleted")
    expect(page.locator("#passage-text")).to_contain_text("Sourdough bread rises")
    expect(page.locator("#passage-link")).to_be_hidden()
    screenshots(page, artifacts, "conversation-gone")

    page.select_option("#collection", "space")  # a conversation keeps to one collection
    expect(page.locator(".turn")).to_have_count(0)
    expect(page.locator("#thread-status")).to_contain_text("this new one asks space")
    assert shown_conversation(page) is None
    expect(page.locator(".conversation-open[aria-current]")).to_have_count(0)
    expect(item(page, bread).locator(".conversation-open")).to_have_text(bread_question)  # still listed
