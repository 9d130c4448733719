"""Figures measured by the security tests, for docs/RELIABILITY.md.

`record(name, value)` merges `{name: value}` into the JSON file named by the environment variable
`RELIABILITY_JSON` (`scripts/reliability.py` sets it and renders the page); without it, nothing is written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def record(name: str, value: object) -> None:
    target = os.environ.get("RELIABILITY_JSON")
    if not target:
        return
    path = Path(target)
    figures = json.loads(path.read_text()) if path.is_file() else {}
    figures[name] = value
    path.write_text(json.dumps(figures, indent=1, sort_keys=True))
