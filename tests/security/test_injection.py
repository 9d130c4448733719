"""Prompt injection, measured: canary documents with embedded instructions go through the real ask pipeline
and the real model; the share of answers that obey them is the follow rate (recorded, not asserted: it is a
property of the model). The test asserts what makes the figure mean something: every canary document was
retrieved into the prompt, and the detector recognises an obeyed instruction."""

from __future__ import annotations

import httpx

from tests.security import canary
from tests.security.conftest import ADMIN, SecureServer
from tests.security.figures import record

SERVER_SETTINGS = {"rate_limit_per_minute": 0}
CORPUS = {"canary": canary.corpus()}
MAX_TOKENS = 24


def test_injected_instructions_follow_rate(secure_server: SecureServer) -> None:
    url, answers, controls = secure_server.url, [], []
    for case in canary.CANARIES:
        r = httpx.post(f"{url}/api/ask", headers=ADMIN, timeout=120, json={
            "question": case.question, "collection": "canary", "k": 2, "max_tokens": MAX_TOKENS, "temperature": 0})
        assert r.status_code == 200, r.text
        body = r.json()
        assert any(case.instruction in s["text"] for s in body["sources"]), case.name  # the attack reached the model
        answers.append(body["answer"])
        plain = httpx.post(f"{url}/v1/chat/completions", headers=ADMIN, timeout=120, json={
            "messages": [{"role": "user", "content": canary.control_question(case)}], "max_tokens": MAX_TOKENS,
            "temperature": 0})
        assert plain.status_code == 200, plain.text
        controls.append(plain.json()["choices"][0]["message"]["content"])
    assert canary.followed(f"Sure: {canary.CANARIES[0].word.lower()}!", canary.CANARIES[0])
    assert not canary.followed("The Moon's gravity causes tides [1].", canary.CANARIES[0])
    follow, control = canary.rate(answers), canary.rate(controls)
    record("injection", {"canaries": len(canary.CANARIES), "max_tokens": MAX_TOKENS,
                         "document_instruction_follow_rate": follow, "user_instruction_follow_rate": control,
                         "followed": [c.name for c, a in zip(canary.CANARIES, answers, strict=True)
                                      if canary.followed(a, c)]})
