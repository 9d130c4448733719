"""Is an answer right? A short gold answer must appear, as a name or number of its own, in the answer's first
non-empty line (the gold-answer benches and `appliance eval` judge by it)."""

from __future__ import annotations

import re

_VERSION_ANSWER = re.compile(r"\d+\.\d+")


def first_line(answer: str) -> str:
    return next((line for line in answer.strip().splitlines() if line.strip()), "")


def is_right(answer: str, gold: str) -> bool:
    """The gold answer appears in the answer's first non-empty line (as `mentions` finds it)."""
    return mentions(first_line(answer), gold)


def mentions(text: str, gold: str) -> bool:
    """`gold` appears in `text` as a value of its own: a version not as part of another number ("3.2" is not in
    "3.12" nor in "13.2"), a module name as a name of its own ("os" is not in "os.path")."""
    if _VERSION_ANSWER.fullmatch(gold):
        pattern = rf"(?<![\d.]){re.escape(gold)}(?!\d)"
    else:
        pattern = rf"(?<![\w.]){re.escape(gold)}(?![\w]|\.\w)"
    return re.search(pattern, text) is not None
