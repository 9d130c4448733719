"""A full queue refuses a generation request once its caller is authenticated and before anything else: its
body is not validated and its prompt not built (under overload a refusal should cost about what `/health`
does)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from appliance.config import Settings
from appliance.engine.async_engine import AsyncEngine
from appliance.server.app import create_app
from tests.server.conftest import served

KEY = "early-refusal-admin-key"
CHAT = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def full(make_engine, tmp_path_factory) -> Iterator[tuple[str, AsyncEngine]]:
    """A server whose queue holds nothing (APPLIANCE_MAX_QUEUE=0): every generation request finds it full."""
    front = AsyncEngine(make_engine(), max_queue=4)
    settings = Settings(data_dir=tmp_path_factory.mktemp("full"), max_queue=0, admin_key=KEY)
    with served(create_app(settings, front, "smollm2")) as url:
        yield url, front


def _post(url: str, path: str, body: object, key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{url}{path}", json=body, headers=headers, timeout=30)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/api/ask"])
def test_a_full_queue_refuses_before_the_body_is_validated(full, path: str) -> None:
    url, _ = full
    r = _post(url, path, {"messages": "not a list", "prompt": 7, "question": None})
    assert r.status_code == 503, r.text
    assert r.json()["error"]["type"] == "overloaded" and r.headers["retry-after"] == "1"


def test_a_full_queue_refuses_before_the_prompt_is_built(full, monkeypatch) -> None:
    url, front = full

    def no_template(*args, **kwargs):
        raise AssertionError("the prompt was built for a request the queue refuses")

    monkeypatch.setattr(front.tokenizer, "apply_chat_template", no_template)
    r = _post(url, "/v1/chat/completions", CHAT)
    assert r.status_code == 503, r.text


def test_the_caller_is_authenticated_first(full) -> None:
    url, _ = full
    assert _post(url, "/v1/chat/completions", CHAT, key=None).status_code == 401
    assert _post(url, "/v1/chat/completions", CHAT, key="wrong").status_code == 401
