"""schemathesis against the app's own OpenAPI schema, over HTTP, with a reader key and then an admin key:
zero server errors, zero schema violations.

Every check runs except `positive_data_acceptance`: the API rightly refuses some schema-valid requests for
reasons a schema cannot state (a collection that does not exist, a prompt longer than the model's context,
`max_tokens` over this server's limit). The reader goes first: the admin's run may revoke keys and delete
collections it finds. Generation is kept cheap by a small `max_tokens` limit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.security.conftest import ADMIN_KEY, SecureServer
from tests.security.figures import record

SERVER_SETTINGS = {"rate_limit_per_minute": 0, "max_tokens_limit": 4}
CORPUS = {"space": {"mars.md": "# Mars\n\nMars is the fourth planet. Olympus Mons is its tallest volcano."}}
MAX_EXAMPLES = 6


def _schemathesis(url: str, key: str, report: Path) -> dict:
    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json",
               "-H", f"Authorization: Bearer {key}", "--checks", "all", "--exclude-checks", "positive_data_acceptance",
               "--max-examples", str(MAX_EXAMPLES), "--seed", "7", "--workers", "1", "--request-timeout", "60",
               "--no-color", "--report", "json", "--report-json-path", str(report)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=report.parent)  # its cache too
    assert report.is_file(), run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(report.read_text())
    result["output"] = run.stdout
    return result


def test_no_server_error_and_no_schema_violation(secure_server: SecureServer, tmp_path: Path) -> None:
    reader = secure_server.new_key("reader", ["space"])
    figures = {}
    for role, key in (("reader", reader), ("admin", ADMIN_KEY)):
        result = _schemathesis(secure_server.url, key, tmp_path / f"{role}.json")
        cases = result["test_cases"]
        operations = result["operations"]
        figures[role] = {"test_cases": cases["generated"], "failures": cases["with_failures"],
                         "errored": cases["errored"], "operations": operations["tested"]}
        assert result["complete"] and result["stop_reason"] == "completed", result["output"][-3000:]
        assert operations["tested"] == operations["total"] >= 20 and cases["generated"] >= 10 * operations["tested"]
        assert (result["failures"], result["errors"], cases["with_failures"], cases["errored"]) == ([], [], 0, 0), \
            result["output"][-6000:]
    record("fuzz", figures)
