"""Filters hold on every retrieval path: a property test over random tags, types, times and document ids.

Sixteen documents share their vocabulary (every query finds passages in each) and carry a marker word of
their own; each gets random tags (team, level), a random content type (md or txt) and a random file time.
Hypothesis draws a filter and a query, then calls search, ask (JSON and SSE) and chat completions with
`rag` (JSON and SSE) with it. A leak is any passage, citation or answer marker of a document outside the
filter, judged against the metadata the test itself assigned; the test counts them and wants zero.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.security.bodies import sse_events, strings_under
from tests.security.conftest import ADMIN, SecureServer
from tests.security.figures import record

COLLECTION = "flt-main"
SERVER_SETTINGS = {"rate_limit_per_minute": 0, "max_tokens_limit": 6}
TOPICS = ["harbour bridge budget review", "clinic vaccination schedule", "mail server migration"]
TEAMS, LEVELS, KINDS = ["hr", "ops", "eng"], ["1", "2"], ["md", "txt"]
DAY = 86400.0
BASE = 1_700_000_000.0
CUTS = ["2023-11-01", "2023-12-01", "2024-01-15", "2024-03-01"]
_MARKER = re.compile(r"zqf\d+x")
_stats = {"examples": 0, "requests": 0, "answered": 0, "leaks": 0}


@dataclass(frozen=True)
class Doc:
    marker: str
    team: str
    level: str
    kind: str
    modified: float
    name: str


_rng = random.Random(20)
DOCS = [Doc(f"zqf{i}x", _rng.choice(TEAMS), _rng.choice(LEVELS), _rng.choice(KINDS),
            BASE + _rng.randrange(0, 120) * DAY, "") for i in range(16)]
DOCS = [Doc(d.marker, d.team, d.level, d.kind, d.modified, f"doc{i}.{d.kind}") for i, d in enumerate(DOCS)]
BY_MARKER = {d.marker: d for d in DOCS}


@pytest.fixture(scope="module")
def tagged(secure_server: SecureServer) -> dict[str, str]:
    """Ingest the documents with their metadata; {marker: doc_id}."""
    folder = secure_server.data_dir.parent / "filtered"
    folder.mkdir(exist_ok=True)
    for i, d in enumerate(DOCS):
        topic = TOPICS[i % len(TOPICS)]
        path = folder / d.name
        path.write_text(f"{topic.capitalize()}\n\nThe {topic} notes: reference {d.marker} applies. "
                        f"Owners must file the {topic} by Friday; code {d.marker} marks this record.")
        os.utime(path, (d.modified, d.modified))
        status = secure_server.service.ingest_paths(COLLECTION, [path], tags={"team": d.team, "level": d.level})
        assert status.state == "done", status
    service = secure_server.service
    return {_MARKER.findall(service.document_chunks(doc.doc_id)[0].text)[0]: doc.doc_id
            for doc in service.list_documents(COLLECTION)}


def _passes(doc: Doc, doc_id: str, filters: dict) -> bool:
    """The filter's meaning, judged on the metadata this test assigned (not on what the server stored)."""
    tags = {"team": doc.team, "level": doc.level}
    after = filters.get("modified_after")  # a date: its midnight UTC
    return (all(tags.get(k) == v for k, v in filters.get("tags", {}).items())
            and (after is None or doc.modified >= datetime.fromisoformat(after).replace(tzinfo=UTC).timestamp())
            and ("content_type" not in filters or doc.kind in filters["content_type"])
            and ("doc_ids" not in filters or doc_id in filters["doc_ids"]))


def _passages(body: object) -> list[str]:
    """Every passage text and quote that a response body carries (hits, sources, citations)."""
    return strings_under(body, ("text", "quote"))


def _leaks(texts: list[str], filters: dict, doc_ids: dict[str, str]) -> list[str]:
    return [m for t in texts for m in _MARKER.findall(t) if not _passes(BY_MARKER[m], doc_ids[m], filters)]


def _check(server: SecureServer, filters: dict, query: str, doc_ids: dict[str, str]) -> list[str]:
    url = server.url
    ask = {"question": query, "collection": COLLECTION, "k": 3, "max_tokens": 6, "filters": filters}
    rag = {"messages": [{"role": "user", "content": query}], "max_tokens": 6,
           "rag": {"collection": COLLECTION, "k": 3, "filters": filters}}
    responses = [httpx.post(f"{url}/api/search", headers=ADMIN, timeout=60,
                            json={"query": query, "collection": COLLECTION, "k": 16, "filters": filters}),
                 httpx.post(f"{url}/api/ask", headers=ADMIN, json=ask, timeout=120),
                 httpx.post(f"{url}/api/ask", headers=ADMIN, json={**ask, "stream": True}, timeout=120),
                 httpx.post(f"{url}/v1/chat/completions", headers=ADMIN, json=rag, timeout=120),
                 httpx.post(f"{url}/v1/chat/completions", headers=ADMIN, json={**rag, "stream": True}, timeout=120)]
    leaks: list[str] = []
    for r in responses:
        assert r.status_code == 200, r.text
        bodies = sse_events(r) if r.headers["content-type"].startswith("text/event-stream") else [r.json()]
        if _passages(bodies):
            _stats["answered"] += 1
        leaks += _leaks(_passages(bodies), filters, doc_ids)
        answer = "".join(str(b.get("answer", "")) + json.dumps(b.get("choices", "")) for b in bodies)
        leaks += [m for m in _leaks([answer], filters, doc_ids) if m not in query]  # an echoed question is no leak
    hits = responses[0].json()["hits"]
    expected = {m for m in BY_MARKER if _passes(BY_MARKER[m], doc_ids[m], filters)}
    found = {m for h in hits for m in _MARKER.findall(h["text"])}
    assert found == expected, (found, expected)  # k covers every document: none withheld either
    _stats["requests"] += len(responses)
    return leaks


_filters = st.fixed_dictionaries({}, optional={
    "tags": st.dictionaries(st.sampled_from(["team", "level"]), st.sampled_from([*TEAMS, *LEVELS]), min_size=1),
    "content_type": st.lists(st.sampled_from(KINDS), min_size=1, max_size=2, unique=True),
    "modified_after": st.sampled_from(CUTS),
    "doc_ids": st.lists(st.integers(0, len(DOCS) - 1), min_size=1, max_size=6, unique=True),
})


@settings(max_examples=10, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(filters={"tags": {"team": "hr"}}, words=[TOPICS[0]])
@example(filters={"content_type": ["txt"], "modified_after": CUTS[2]}, words=[TOPICS[1], "zqf3x"])
@given(filters=_filters,
       words=st.lists(st.sampled_from([*TOPICS, *BY_MARKER]), min_size=1, max_size=3))
def test_no_passage_leaves_the_filter(secure_server: SecureServer, tagged: dict[str, str], filters: dict,
                                      words: list[str]) -> None:
    if "doc_ids" in filters:  # drawn as indexes into DOCS: the ids are only known once ingested
        filters = {**filters, "doc_ids": [tagged[DOCS[i].marker] for i in filters["doc_ids"]]}
    leaks = _check(secure_server, filters, " ".join(words), tagged)
    _stats["leaks"] += len(leaks)
    _stats["examples"] += 1
    record("filters", {"examples": _stats["examples"], "requests": _stats["requests"],
                       "answered_with_passages": _stats["answered"], "leaked_passages": _stats["leaks"]})
    assert leaks == []


def test_the_property_can_see_a_leak(secure_server: SecureServer, tagged: dict[str, str]) -> None:
    """The checker is not vacuous: an unfiltered search judged against a filter finds documents outside it."""
    hits = httpx.post(f"{secure_server.url}/api/search", headers=ADMIN,
                      json={"query": TOPICS[0], "collection": COLLECTION, "k": 16}).json()
    leaks = _leaks(_passages(hits), {"tags": {"team": "hr"}}, tagged)
    assert leaks and all(BY_MARKER[m].team != "hr" for m in leaks)


def test_path_of_a_marker_is_its_own_document(tagged: dict[str, str]) -> None:
    assert len(tagged) == len(DOCS) and all(Path(d.name).suffix[1:] == d.kind for d in DOCS)
