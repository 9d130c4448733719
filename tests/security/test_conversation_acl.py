"""Conversations and their feedback stay with the key that made them: a property test over random keys,
conversations and operations.

Three keys ask questions (two readers with different grants, one admin), each starting conversations in the
collections it may read. Hypothesis then draws a caller (one of them, or a fresh reader), a conversation and
an operation (read it, list, rename, rate a turn, continue it, export the feedback). A reader must get 404
for another key's conversation (its existence is not told), never see it in a list, never reach the
feedback export; an owner and an admin get what they ask for. One conversation is over a collection its
owner can no longer read (as after a grant change): it is refused with 403 and never listed.
"""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.conversations.store import NewTurn
from appliance.server.deps import conversations_of
from tests.security.conftest import ADMIN, SecureServer

NAMES = ["conv-north", "conv-south"]
CORPUS = {name: {f"{name}-{i}.md": f"# {name} record {i}\n\nThe {name} depot stores {what}."
                 for i, what in enumerate(["salt", "grain", "timber"])} for name in NAMES}
SERVER_SETTINGS = {"rate_limit_per_minute": 0, "max_tokens_limit": 4}
OPERATIONS = ["get", "list", "list_all", "rename", "feedback", "continue", "export"]


@pytest.fixture(scope="module")
def world(secure_server: SecureServer) -> dict:
    """Keys and their conversations: {"keys": {label: (key, key_id, role, grant)}, "owned": {id: label}}."""
    grants = {"north": ["conv-north"], "both": NAMES, "admin": None}
    keys = {}
    for label, grant in grants.items():
        key = secure_server.new_key("admin" if grant is None else "reader", grant or [])
        keys[label] = (key, key.split("_")[1], "admin" if grant is None else "reader", set(grant or NAMES))
    owned = {}
    for label, (key, _, _, grant) in keys.items():
        for collection in sorted(grant):
            r = httpx.post(f"{secure_server.url}/api/ask", headers=_auth(key), timeout=120,
                           json={"question": f"What does the {collection} depot store?", "collection": collection,
                                 "k": 2, "max_tokens": 4})
            assert r.status_code == 200, r.text
            owned[r.json()["conversation_id"]] = label
    # a conversation of "north" over a collection it cannot read (written as if its grant had since shrunk)
    lost = "lostgrant0000"
    turn = NewTurn("Q?", "Q?", "none", "A.", (1,), "stop", [], [], [], {})
    conversations_of(secure_server.app.state.appliance).add_turn(lost, keys["north"][1], "conv-south", turn)
    return {"keys": keys, "owned": owned, "lost": lost}


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _call(url: str, key: str, operation: str, conversation_id: str) -> httpx.Response:
    auth, one = _auth(key), f"{url}/api/conversations/{conversation_id}"
    if operation == "get":
        return httpx.get(one, headers=auth)
    if operation == "list":
        return httpx.get(f"{url}/api/conversations", headers=auth)
    if operation == "list_all":
        return httpx.get(f"{url}/api/conversations", headers=auth, params={"all": "true"})
    if operation == "rename":
        return httpx.patch(one, headers=auth, json={"title": "renamed"})
    if operation == "feedback":
        return httpx.post(f"{one}/turns/1/feedback", headers=auth, json={"rating": "up", "comment": "ok"})
    if operation == "continue":
        return httpx.post(f"{url}/api/ask", headers=auth, timeout=120, json={
            "question": "And what else?", "collection": "conv-north", "k": 2, "max_tokens": 4,
            "conversation_id": conversation_id})
    return httpx.get(f"{url}/api/admin/feedback", headers=auth, params={"format": "json"})


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(caller=st.sampled_from(["north", "both", "admin", "stranger"]), pick=st.integers(0, 10**6),
       operation=st.sampled_from(OPERATIONS))
def test_a_reader_never_reaches_another_keys_conversation(secure_server: SecureServer, world: dict, caller: str,
                                                          pick: int, operation: str) -> None:
    if caller not in world["keys"]:  # a reader that owns nothing, with every grant
        world["keys"][caller] = (key := secure_server.new_key("reader", NAMES), key.split("_")[1], "reader",
                                 set(NAMES))
    key, key_id, role, grant = world["keys"][caller]
    ids = sorted(world["owned"])
    conversation_id = ids[pick % len(ids)]
    owner = world["owned"][conversation_id]
    r = _call(secure_server.url, key, operation, conversation_id)
    store = conversations_of(secure_server.app.state.appliance)
    if operation == "export":
        assert r.status_code == (200 if role == "admin" else 403), r.text
        return
    if operation in ("list", "list_all"):
        if operation == "list_all" and role != "admin":
            assert r.status_code == 403
            return
        listed = {c["conversation_id"]: c for c in r.json()["conversations"]}
        assert world["lost"] not in listed or role == "admin"
        assert all(c["owner"] == key_id for c in listed.values()) or operation == "list_all"
        mine = {c.conversation_id for c in store.list_conversations(key_id) if c.collection in grant}
        assert set(listed) == mine if operation == "list" else set(listed) >= mine
        return
    allowed = role == "admin" or owner == caller
    if not allowed:
        assert r.status_code == 404, r.text
        # the refusal of a conversation that does not exist, word for word: nothing of it is told
        assert r.json()["error"] == {"type": "not_found", "message": f"no conversation {conversation_id!r}"}
        return
    if operation == "continue" and store.get(conversation_id).collection != "conv-north":
        assert r.status_code == 409
        return
    assert r.status_code == 200, r.text


def test_a_conversation_over_a_collection_no_longer_granted_is_refused(secure_server: SecureServer,
                                                                       world: dict) -> None:
    key = world["keys"]["north"][0]
    r = httpx.get(f"{secure_server.url}/api/conversations/{world['lost']}", headers=_auth(key))
    assert r.status_code == 403 and r.json()["error"]["type"] == "forbidden"
    assert httpx.post(f"{secure_server.url}/api/conversations/{world['lost']}/turns/1/feedback", headers=_auth(key),
                      json={"rating": "up"}).status_code == 403
    listed = httpx.get(f"{secure_server.url}/api/conversations", headers=_auth(key)).json()["conversations"]
    assert world["lost"] not in {c["conversation_id"] for c in listed}
    admin = httpx.get(f"{secure_server.url}/api/conversations/{world['lost']}", headers=ADMIN)
    assert admin.status_code == 200  # an admin reads every collection


def test_feedback_export_carries_only_rated_turns_and_is_admin_only(secure_server: SecureServer, world: dict) -> None:
    key = world["keys"]["both"][0]
    assert httpx.get(f"{secure_server.url}/api/admin/feedback", headers=_auth(key)).status_code == 403
    exported = httpx.get(f"{secure_server.url}/api/admin/feedback", headers=ADMIN, params={"format": "json"})
    rated = {(c.conversation_id, t.n)
             for c, t in conversations_of(secure_server.app.state.appliance).rated_turns()}
    assert {(x["conversation_id"], x["turn"]) for x in exported.json()["feedback"]} == rated
