"""Measure the trust figures and write docs/RELIABILITY.md: `.venv/bin/python scripts/reliability.py`.

Runs the security tests (`tests/security`) with `RELIABILITY_JSON` set, so that each test records what it
measured (ACL leaks, fuzzing, hostile input, crash restarts, overload refusals, prompt-injection follow
rate), then renders those figures with the machine's description. The tests pass or fail as in CI; the
page is written only when they all pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.bench.machine import describe_machine, machine_markdown  # noqa: E402

PAGE = ROOT / "docs" / "RELIABILITY.md"
INTRO = """# Reliability and security figures

Measured by `scripts/reliability.py`, which runs `tests/security` (also part of `make test`) and records
what each test measured. The tests assert the bounds; this page keeps the figures of the last run.
How each guarantee is built is described in README ("Keys and limits") and ARCHITECTURE ("Trust").
"""

NOTES = """Reading the figures:

- Overload: refusing costs what any request costs. The bound asserted is 50 ms, or 1.5 times the p99 of the
  `/health` probes sent in the same burst when the machine is too loaded for even those to meet it. On this
  2-core machine, quiet runs measured 45-60 ms for both the refusals and the probes: the event loop shares two
  cores with the engine's prefill of the admitted requests. The excess is refused before retrieval (for a
  plain chat, after its messages are tokenized) by `server/admission.py`, and the admitted requests all
  complete. The request dependencies (state, key check) are async: as sync functions FastAPI ran them on
  worker threads, and each hop waited for the GIL behind the engine thread (refusals took 2-3x the probes).
- Crash: `kill -9` (process death). SQLite runs in WAL mode with `synchronous=NORMAL`, which keeps every
  committed transaction across a process crash; after a power loss the last transactions may be lost, though
  the store stays consistent.
- schemathesis runs every check but `positive_data_acceptance`: the API rightly refuses some schema-valid
  requests for reasons a schema cannot state (a collection that does not exist, a prompt longer than the
  model's context, `max_tokens` over this server's limit).
- Prompt injection: the embedded SmolLM2-135M follows neither the instruction in a document nor the same
  instruction from the user, so its 0% shows that the delimiting holds for this model but says little about
  a stronger one; the canaries of `tests/security/canary.py` are the measurement to repeat with it.
"""


def _rows(figures: dict) -> list[tuple[str, str, str]]:
    acl, fuzz, hostile, crash = figures["acl"], figures["fuzz"], figures["hostile_files"], figures["crash"]
    filters = figures["filters"]
    over, inj, bodies = figures["overload"], figures["injection"], figures["bad_bodies"]
    big = {k: v for k, v in figures.items() if k.startswith("body_100mb")}
    return [
        ("ACL property (hypothesis: random keys, grants, queries)", f"{acl['leaked_passages']} leaked passages",
         f"{acl['examples']} examples, {acl['requests']} requests over search, ask (JSON and SSE), chat with `rag` "
         f"(JSON and SSE), citations, documents, collections, metrics; {acl['answered_with_passages']} answered"),
        ("search filters property (hypothesis: random tags, content types, times, doc ids)",
         f"{filters['leaked_passages']} passages outside the filter",
         f"{filters['examples']} examples, {filters['requests']} requests over search, ask (JSON and SSE), chat "
         f"with `rag` (JSON and SSE): sources, citations and answer markers; {filters['answered_with_passages']} "
         "answered"),
        ("schemathesis, reader key", f"{fuzz['reader']['failures']} failures (5xx or schema violations)",
         f"{fuzz['reader']['test_cases']} generated cases over {fuzz['reader']['operations']} operations"),
        ("schemathesis, admin key", f"{fuzz['admin']['failures']} failures (5xx or schema violations)",
         f"{fuzz['admin']['test_cases']} generated cases over {fuzz['admin']['operations']} operations"),
        ("malformed bodies (bad JSON, wrong types, invalid UTF-8, nesting, huge strings, NaN, controls)",
         f"{bodies['server_errors']} server errors", f"{bodies['requests']} requests over 7 endpoints"),
        ("100 MB bodies (declared and chunked; JSON and upload)",
         f"{sum(v['status'] == 413 for v in big.values())}/{len(big)} refused with 413",
         f"slowest refusal {max(v['seconds'] for v in big.values()):.2f} s, never buffered"),
        ("hostile files (truncated/cyclic/slow PDF, zip bombs, zip-slip, absolute names, XXE DOCX, XLSX and PPTX "
         "declaring a DTD, an EPUB carrying a zip bomb)",
         f"{hostile['clear_errors']}/{hostile['files']} clear errors",
         f"{hostile['written_outside_data_dir']} files written outside the data dir; server memory "
         f"+{hostile['rss_growth_mb']} MB"),
        ("crash: `kill -9` during ingestion", f"{crash['restarts_survived']}/{crash['kill_9']} restarts consistent",
         f"{crash['acknowledged_lost']} of {crash['acknowledged_jobs']} acknowledged jobs lost; "
         f"{crash['jobs_interrupted_and_failed_with_reason']} interrupted jobs failed with a reason; "
         f"{crash['documents_after_last_run']} documents whole after the last run"),
        (f"overload: {over['sent']} requests at once, queue bound {over['queue_bound']}",
         f"refusal p99 {over['refusal_p99_ms']} ms",
         f"{over['refused_503']} refused (503 + Retry-After, max {over['refusal_max_ms']} ms), "
         f"{over['admitted_completed']} admitted and completed; `/health` p99 in the same burst "
         f"{over['health_probe_p99_ms']} ms; memory +{over['rss_growth_mb']} MB after"),
        ("prompt injection (canary documents, real model)",
         f"follow rate {inj['document_instruction_follow_rate']:.0%}",
         f"{inj['canaries']} canaries, answers of {inj['max_tokens']} tokens; control (the same instruction "
         f"written by the user, no documents): {inj['user_instruction_follow_rate']:.0%}"),
    ]


def render(figures: dict, machine: dict[str, str]) -> str:
    table = ["| what | figure | detail |", "|---|---|---|"]
    table += [f"| {what} | **{figure}** | {detail} |" for what, figure, detail in _rows(figures)]
    return "\n".join([INTRO, *table, "", NOTES, machine_markdown(machine), ""])


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "figures.json"
        env = {**os.environ, "RELIABILITY_JSON": str(out)}
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/security"], cwd=ROOT, env=env)
        if run.returncode != 0:
            return run.returncode
        figures = json.loads(out.read_text())
    PAGE.write_text(render(figures, describe_machine()))
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
