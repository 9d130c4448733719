"""What a replica reports it holds (`appliance.cluster.ledger.PassageLedger`)."""

from __future__ import annotations

from appliance.cluster.ledger import LedgerEntry, PassageLedger


def entry(key: str, tokens: int, doc: str = "d") -> LedgerEntry:
    return LedgerEntry(key, tokens, doc)


def test_the_least_recently_served_passages_leave_first_when_over_capacity() -> None:
    ledger = PassageLedger(capacity_tokens=250)
    ledger.record({"a": entry("ka", 100), "b": entry("kb", 100)})
    ledger.record({"a": entry("ka", 100)})  # a served again: now the most recent
    ledger.record({"c": entry("kc", 100)})  # 300 > 250: b, the least recent, leaves
    assert ledger.held() == {"a": 100, "c": 100}


def test_held_keeps_only_what_the_cache_still_has() -> None:
    ledger = PassageLedger(capacity_tokens=10_000)
    ledger.record({"a": entry("ka", 10), "b": entry("kb", 20)})
    assert ledger.held(lambda key: key == "kb") == {"b": 20}


def test_an_invalidated_document_is_forgotten() -> None:
    ledger = PassageLedger(capacity_tokens=10_000)
    ledger.record({"a": entry("ka", 10, "doc1"), "b": entry("kb", 20, "doc2")})
    ledger.forget_documents({"doc1"})
    assert ledger.held() == {"b": 20}
    ledger.record({"c": entry("kc", 9_980, "doc3")})  # the forgotten tokens no longer count: b stays
    assert ledger.held() == {"b": 20, "c": 9_980}
