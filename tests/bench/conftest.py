"""Fixtures of the bench tests."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import pytest

from retrieval.parse.html import parse_html
from retrieval.types import ParsedDocument


@pytest.fixture(scope="module")
def parse_once() -> Iterator[Callable[[bytes, str], ParsedDocument]]:
    """`parse_html`, each page parsed once per module: a gold-set test reads the pages that the generator it
    reruns reads again (the same bytes and name give the same document, so the cache changes no result)."""
    cached = functools.cache(parse_html)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("retrieval.parse.html.parse_html", cached)
        yield cached
