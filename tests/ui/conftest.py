"""Browser fixtures: the real appliance (real model, empty data dir, an admin key) on loopback, and Debian's
Chromium driven by Playwright. Screenshots go to tests/ui/artifacts/ (ignored by git)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from appliance.config import Settings
from appliance.engine.async_engine import AsyncEngine
from appliance.server.app import create_app
from retrieval.service import RetrievalService
from tests.server.conftest import served

CHROMIUM = "/usr/bin/chromium"
ADMIN_KEY = "ui-test-admin-key"
ARTIFACTS = Path(__file__).parent / "artifacts"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@dataclass
class UiServer:
    url: str
    service: RetrievalService


@pytest.fixture(scope="module")
def ui_server(make_engine, loaded_model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiServer]:
    """The whole appliance over an empty data dir; only ADMIN_KEY (and keys made with it) get in."""
    data_dir = tmp_path_factory.mktemp("ui") / "data"
    settings = Settings(data_dir=data_dir, admin_key=ADMIN_KEY)
    service = RetrievalService.open(data_dir, loaded_model.tokenizer, chunk_tokens=128)
    engine = AsyncEngine(make_engine(max_num_seqs=4), max_queue=settings.max_queue)
    with served(create_app(settings, engine, "smollm2", retrieval=service)) as url:
        yield UiServer(url, service)
    service.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless (never a downloaded browser build). `make test` installs it; without it the
    UI tests are skipped (a failure under `make test`, which allows only gpu skips)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"the UI tests need Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS


@pytest.fixture
def open_page(browser: Browser, ui_server: UiServer) -> Iterator[Callable[..., Page]]:
    """open_page(path, key=ADMIN_KEY): a fresh browser tab (its own session storage) on `path`, signed in with
    `key` through the sign-in form (key=None: not signed in). Script errors fail the test."""
    contexts = []
    errors: list[str] = []

    def open_(path: str, key: str | None = ADMIN_KEY) -> Page:
        context = browser.new_context(viewport=DESKTOP, permissions=["clipboard-read", "clipboard-write"])
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(ui_server.url + path)
        if key is not None:
            sign_in(page, key)
            page.wait_for_selector("#main:not([hidden])")
        return page

    yield open_
    for context in contexts:
        context.close()
    assert not errors, f"script errors in the page: {errors}"


def sign_in(page: Page, key: str) -> None:
    page.fill("#login-key", key)
    page.click("#login button[type=submit]")


def screenshots(page: Page, artifacts: Path, name: str) -> None:
    """`<name>-desktop.png` and `<name>-phone.png` of the whole page."""
    for label, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        page.screenshot(path=artifacts / f"{name}-{label}.png", full_page=True)
    page.set_viewport_size(DESKTOP)


def ask_briefly(page: Page, collection: str, question: str, **options: str) -> Locator:
    """On the Q&A page: choose `collection`, open the options (an answer of 8 tokens; `options`: more option
    inputs by element id, e.g. `**{"filter-tags": "team=hr"}`), ask, and wait for the turn's answer -> the turn."""
    page.select_option("#collection", collection)
    page.click(".options summary")
    for element_id, value in {"max-tokens": "8", **options}.items():
        page.fill(f"#{element_id}", value)
    page.fill("#question", question)
    page.press("#question", "Enter")
    turn = page.locator(".turn")
    expect(turn).to_have_attribute("data-state", "done", timeout=60_000)
    return turn
