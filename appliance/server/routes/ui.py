"""The web UI: the static pages and assets of the repository's `ui/` folder, served by the appliance itself.

Pages: `/` (questions over a collection), `/search`, `/admin`, `/doc` (one document's passages). Assets live
under `/ui/...` (CSS and JS only). The pages hold no data: every figure comes from the JSON API, called by the
page's scripts with the key the user typed. Every UI response carries a strict Content-Security-Policy (scripts
and styles from this origin only, no inline code, no framing) as a second line of defence behind the rule that
the scripts insert all text with `textContent`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from appliance.server.errors import ApiError

UI_DIR = Path(__file__).resolve().parents[3] / "ui"
PAGES = {"/": "index.html", "/search": "search.html", "/admin": "admin.html", "/doc": "doc.html"}
ASSET_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def _file(path: Path, media_type: str) -> FileResponse:
    if not path.is_file():
        raise ApiError(404, "not_found", f"{path.name} is not part of this installation's web UI")
    return FileResponse(path, media_type=media_type, headers=SECURITY_HEADERS)


def _page_route(filename: str) -> Callable[[], FileResponse]:
    def page() -> FileResponse:
        return _file(UI_DIR / filename, "text/html; charset=utf-8")

    return page


for _path, _filename in PAGES.items():
    router.add_api_route(_path, _page_route(_filename), methods=["GET"], name=f"ui:{_filename}")


@router.get("/ui/{asset:path}")
def asset(asset: str) -> FileResponse:
    """A CSS or JS file under `ui/` (never outside it, never another type)."""
    path = (UI_DIR / asset).resolve()
    media_type = ASSET_TYPES.get(path.suffix)
    if media_type is None or not path.is_relative_to(UI_DIR):
        raise ApiError(404, "not_found", f"no asset {asset!r}")
    return _file(path, media_type)
