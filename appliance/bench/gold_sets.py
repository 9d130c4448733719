"""The checked-in gold-answer sets, by name, and `appliance bench gold-set` that regenerates them.

- `versions` (`gold_set.py`): "In which Python version was X added / changed like this?" from the pages'
  version notes; near the floor for the embedded 135M model.
- `modules` (`gold_modules.py`): "Which module provides X?", the answer written beside X in its passage.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import typer

from appliance.bench import gold_modules, gold_set
from appliance.bench.gold_set import COUNT, PER_PAGE, SEED, GoldQuestion, load_gold

Generator = Callable[[Path, int], list[GoldQuestion]]
SETS: dict[str, tuple[Path, Generator, str]] = {
    "versions": (gold_set.GOLD_SET, gold_set.generate, "appliance/bench/gold_set.py"),
    "modules": (gold_modules.MODULE_SET, gold_modules.generate, "appliance/bench/gold_modules.py"),
}


def load_set(name: str, limit: int | None = None) -> list[GoldQuestion]:
    """The first `limit` questions of the checked-in set `name` (one of `SETS`)."""
    return load_gold(limit, SETS[name][0])


@dataclass(frozen=True)
class GoldQuestions:
    """Questions as a bench asks them: their texts, the pages that answer them, their gold answers; `name`
    says where they come from (a set of `SETS`, or a test's own)."""

    name: str
    texts: list[str]
    pages: list[str]
    golds: list[str]
    apis: list[str] = field(default_factory=list)  # what each question asks about, e.g. filecmp.clear_cache

    @classmethod
    def from_set(cls, name: str, limit: int | None = None) -> GoldQuestions:
        questions = load_set(name, limit)
        return cls(name, [q.question for q in questions], [q.page for q in questions], [q.answer for q in questions],
                   [q.api for q in questions])


def bench_gold_set(
    kind: Annotated[str, typer.Option(help="which set: versions or modules")] = "versions",
    corpus: Annotated[Path, typer.Option(help="the python3.11-doc library pages")
                      ] = Path("/usr/share/doc/python3.11/html/library"),
    out: Annotated[Path | None, typer.Option(help="where to write the set (default: its checked-in file)")] = None,
    count: Annotated[int, typer.Option(min=1, help="questions at most")] = COUNT,
) -> None:
    """Regenerate a gold-answer question set from the library pages (deterministic)."""
    if kind not in SETS:
        raise typer.BadParameter(f"one of {', '.join(SETS)}", param_hint="--kind")
    if not corpus.is_dir():
        raise typer.BadParameter(f"{corpus} is not a folder (apt-get install python3.11-doc)", param_hint="--corpus")
    path, generate, method = SETS[kind]
    out = out or path
    questions = generate(corpus, count)
    out.write_text(json.dumps({"generator": f"appliance bench gold-set --kind {kind} ({method})",
                               "corpus": "python3.11-doc, html/library", "seed": SEED, "per_page": PER_PAGE,
                               "questions": [asdict(q) for q in questions]}, indent=1) + "\n")
    pages = len({q.page for q in questions})
    typer.echo(f"wrote {len(questions)} questions over {pages} pages to {out}")
