"""Reading what a response gave away: its SSE events, and every string under given keys at any depth (the
access property tests look there for passages, quotes and titles that must not appear)."""

from __future__ import annotations

import json

import httpx


def sse_events(response: httpx.Response) -> list[dict]:
    """The JSON data of each server-sent event (without OpenAI's closing `[DONE]`)."""
    return [json.loads(line[6:]) for line in response.text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


def strings_under(body: object, keys: tuple[str, ...]) -> list[str]:
    """Every string value whose key is in `keys`, anywhere in a JSON body (dicts and lists walked)."""
    found: list[str] = []
    if isinstance(body, dict):
        for key, value in body.items():
            if key in keys and isinstance(value, str):
                found.append(value)
            else:
                found += strings_under(value, keys)
    elif isinstance(body, list):
        for item in body:
            found += strings_under(item, keys)
    return found
