"""Reader grants hold on every path: a property test over random keys, collections and queries.

Four collections share their vocabulary (so every query finds passages in each of them), and every
document carries marker words of its own collection. Hypothesis draws a key (reader with a random grant,
sometimes an admin), a target collection (granted, not granted, or nonexistent) and a query, then calls
search, ask (JSON and SSE), chat completions with `rag` (JSON and SSE), the readable collections, a
document view and the metrics. A leak is any passage, citation, document or listed collection outside the
grant, or a foreign marker in an answer: the test counts them and wants zero.
"""

from __future__ import annotations

import json
import random
import re

import httpx
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.security.bodies import sse_events, strings_under
from tests.security.conftest import SecureServer
from tests.security.figures import record

NAMES = ["acl-alpha", "acl-bravo", "acl-charlie", "acl-delta"]
TOPICS = ["budget review for the harbour bridge", "vaccination schedule of the clinic", "migration of the mail servers"]
SERVER_SETTINGS = {"rate_limit_per_minute": 0, "max_tokens_limit": 6}
_rng = random.Random(7)
MARKERS = {name: [f"zq{name[4:]}{i}{_rng.randrange(10**6)}" for i in range(len(TOPICS))] for name in NAMES}
CORPUS = {
    name: {f"{name}-{i}.md": f"# {topic.capitalize()}\n\nThe {topic} notes: reference {MARKERS[name][i]} applies. "
                             f"Owners must file the {topic} by Friday; code {MARKERS[name][i]} marks this record."
           for i, topic in enumerate(TOPICS)}
    for name in NAMES
}
_MARKER = re.compile(r"zq[a-z]+\d+")
_stats = {"examples": 0, "requests": 0, "answered": 0, "leaks": 0}


def _owner_of(marker: str) -> str:
    return next(name for name, marks in MARKERS.items() if marker in marks)


def _leaks(texts: list[str], visible: set[str]) -> list[str]:
    """Markers of collections outside `visible` found in `texts`."""
    return [m for t in texts for m in _MARKER.findall(t) if _owner_of(m) not in visible]


def _passages(body: object) -> list[str]:
    """Every passage text and document title that a response body carries (hits, sources, citations)."""
    return strings_under(body, ("text", "quote", "title"))


def _check(server: SecureServer, key: str, visible: set[str], target: str, query: str) -> list[str]:
    """Call every path once; return the leaks (an empty list when the grant held everywhere)."""
    url, auth = server.url, {"Authorization": f"Bearer {key}"}
    readable = target in visible
    leaks: list[str] = []

    def expect_refusal_or(response: httpx.Response, allowed: bool) -> None:
        if not allowed:
            assert response.status_code in (403, 404), response.text
            leaks.extend(_passages(response.json()))

    search = httpx.post(f"{url}/api/search", headers=auth, json={"query": query, "collection": target, "k": 5})
    expect_refusal_or(search, readable)
    ask = {"question": query, "collection": target, "k": 3, "max_tokens": 6}
    rag = {"messages": [{"role": "user", "content": query}], "max_tokens": 6, "rag": {"collection": target, "k": 3}}
    answers = [httpx.post(f"{url}/api/ask", headers=auth, json=ask, timeout=120),
               httpx.post(f"{url}/api/ask", headers=auth, json={**ask, "stream": True}, timeout=120),
               httpx.post(f"{url}/v1/chat/completions", headers=auth, json=rag, timeout=120),
               httpx.post(f"{url}/v1/chat/completions", headers=auth, json={**rag, "stream": True}, timeout=120)]
    for r in [search, *answers]:
        expect_refusal_or(r, readable)
        if r.status_code == 200:
            _stats["answered"] += 1
            bodies = sse_events(r) if r.headers["content-type"].startswith("text/event-stream") else [r.json()]
            leaks += _leaks(_passages(bodies), visible)
            answer = "".join(str(b.get("answer", "")) + json.dumps(b.get("choices", "")) for b in bodies)
            leaks += [m for m in _leaks([answer], visible) if m not in query]  # echoing the question is no leak
    listed = {c["name"] for c in httpx.get(f"{url}/api/collections", headers=auth).json()["collections"]}
    leaks += sorted(listed - visible)
    for name in NAMES:
        doc = server.service.list_documents(name)[0]
        view = httpx.get(f"{url}/api/documents/{doc.doc_id}", headers=auth)
        assert view.status_code == (200 if name in visible else 404), view.text
        if name not in visible:
            leaks += _passages(view.json())
    metrics = httpx.get(f"{url}/metrics", headers=auth).text
    leaks += [name for name in NAMES if name in metrics]
    _stats["requests"] += 7 + len(NAMES)
    return leaks


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(role="reader", grant={NAMES[0]}, target=NAMES[0], words=[TOPICS[0], MARKERS[NAMES[1]][0]])  # answered
@example(role="reader", grant={NAMES[0], NAMES[2]}, target=NAMES[1], words=[TOPICS[1]])  # refused
@given(role=st.sampled_from(["reader", "reader", "reader", "admin"]),
       grant=st.sets(st.sampled_from([*NAMES, "acl-ghost"]), max_size=3),
       target=st.sampled_from([*NAMES, "acl-ghost"]),
       words=st.lists(st.sampled_from([*TOPICS, *(m for ms in MARKERS.values() for m in ms)]), min_size=1, max_size=3))
def test_no_passage_leaves_a_readers_grant(secure_server: SecureServer, role: str, grant: set[str], target: str,
                                           words: list[str]) -> None:
    key = secure_server.new_key(role, sorted(grant) if role == "reader" else [])
    visible = set(NAMES) if role == "admin" else grant & set(NAMES)
    leaks = _check(secure_server, key, visible, target, " ".join(words))
    _stats["leaks"] += len(leaks)
    _stats["examples"] += 1
    record("acl", {"examples": _stats["examples"], "requests": _stats["requests"],
                   "answered_with_passages": _stats["answered"], "leaked_passages": _stats["leaks"]})
    assert leaks == []


def test_the_property_can_see_a_leak(secure_server: SecureServer) -> None:
    """The checker is not vacuous: an admin key judged as a reader of one collection leaks the others."""
    admin_key = secure_server.new_key("admin")
    leaks = _leaks([t for name in NAMES for t in CORPUS[name].values()], {NAMES[0]})
    assert leaks and all(_owner_of(m) != NAMES[0] for m in leaks)
    hits = httpx.post(f"{secure_server.url}/api/search", headers={"Authorization": f"Bearer {admin_key}"},
                      json={"query": TOPICS[0], "collection": NAMES[1], "k": 3}).json()
    assert _leaks(_passages(hits), {NAMES[0]})
