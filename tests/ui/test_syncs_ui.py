"""The admin page's "Synced folders" table in Chromium: a folder synced with `FolderSync` (what `appliance sync`
runs) is listed with its state and its last pass's changes; a folder name with markup shows as text."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page, expect

from retrieval.sync import FolderSync
from tests.ui.conftest import UiServer, screenshots

OpenPage = Callable[..., Page]


def test_admin_page_lists_synced_folders(open_page: OpenPage, ui_server: UiServer, tmp_path: Path,
                                         artifacts: Path) -> None:
    page = open_page("/admin")
    expect(page.locator("#syncs-status")).to_contain_text("No synced folders")
    folder = tmp_path / "<img src=x onerror=alert(1)>"
    folder.mkdir()
    (folder / "tides.md").write_text("# Tides\n\nThe Moon's pull raises two tidal bulges on the oceans.")
    (folder / "notes.bin").write_bytes(b"\x00\x01")
    FolderSync(ui_server.service).run("tides", folder)
    page.reload()
    row = page.locator("#syncs-table tbody tr[data-collection=tides]")
    expect(row).to_be_visible()
    cells = row.locator("th, td")
    expect(cells.nth(1)).to_have_text(str(folder.resolve()))  # the markup is text
    expect(cells.nth(2)).to_have_text("done")
    expect(cells.nth(4)).to_have_text("1 added, 0 changed, 0 removed, 0 renamed, 0 failed, 1 unsupported")
    assert page.locator("#syncs-table img").count() == 0
    screenshots(page, artifacts, "admin-syncs")
