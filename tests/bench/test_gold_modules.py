"""The `modules` gold set: its generator's rules, its determinism, and that the checked-in set is what the
generator makes from Debian's python3.11-doc pages, every answer written beside its name as the appliance reads
the page."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from appliance.bench.gold_modules import MODULE_SET, generate, page_apis, question_for
from appliance.bench.gold_set import plain
from appliance.bench.gold_sets import load_set
from appliance.evaluation.gold_answer import is_right

LIBRARY = Path("/usr/share/doc/python3.11/html/library")


def page(module: str, entries: str) -> str:
    return f"""<html><head><title>{module}</title></head><body><div class="body" role="main">
<section id="module-{module}"><h1>{module} — things</h1>
<p>The {module} module does things with other things, as this paragraph goes on to explain at length.</p>
{entries}</section></div></body></html>"""


def entry(kind: str, api: str, text: str = "It does what its name says, and a little more besides.") -> str:
    return f"""<dl class="py {kind}"><dt class="sig sig-object py" id="{api}">{api}(x)</dt><dd><p>{text}</p>
<dl class="py method"><dt class="sig sig-object py" id="{api}.inner">inner()</dt><dd><p>A method.</p></dd></dl>
</dd></dl>"""


SPAM = page("spam", entry("function", "spam.fryer") + entry("class", "spam.Skillet") + entry("function", "spam.spam")
            + entry("function", "spam.cook") + entry("attribute", "spam.salt") + entry("function", "spam.ok"))
EGGS = page("eggs", entry("function", "eggs.cook") + entry("function", "eggs.boil"))


def test_functions_and_classes_belong_to_the_longest_module_declared() -> None:
    html = SPAM.replace('<section id="module-spam">', '<section id="module-spam"><span id="module-spam.skillet">'
                        '</span>') + entry("function", "spam.skillet.scrub")
    assert page_apis(html) == [("function", "spam", "fryer"), ("class", "spam", "Skillet"),
                               ("function", "spam", "spam"), ("function", "spam", "cook"), ("function", "spam", "ok"),
                               ("function", "spam.skillet", "scrub")]  # no methods, no attributes


def test_ambiguous_and_give_away_names_make_no_question(tmp_path: Path) -> None:
    (tmp_path / "spam.html").write_text(SPAM)
    (tmp_path / "eggs.html").write_text(EGGS)
    asked = {(q.api, q.answer) for q in generate(tmp_path, count=20, per_page=20)}
    # cook is in two modules, spam.spam gives its answer away, ok is shorter than MIN_NAME
    assert asked == {("spam.fryer", "spam"), ("spam.Skillet", "spam"), ("eggs.boil", "eggs")}
    assert question_for("class", "Skillet").startswith(
        "Which Python standard library module provides the class Skillet?")


def test_generation_is_deterministic(tmp_path: Path) -> None:
    for name in sorted(LIBRARY.glob("*.html"))[:40]:
        shutil.copy(name, tmp_path / name.name)
    first, second = generate(tmp_path, count=15, per_page=3), generate(tmp_path, count=15, per_page=3)
    assert first == second and len(first) == 15


@pytest.fixture(scope="module")
def gold() -> list:
    return load_set("modules")


def test_the_checked_in_set_is_large_and_spread(gold: list) -> None:
    assert len(gold) >= 200
    assert len({q.question for q in gold}) == len(gold)
    assert len({q.page for q in gold}) >= 50
    assert json.loads(MODULE_SET.read_text())["generator"].startswith("appliance bench gold-set --kind modules")


def test_every_gold_answer_is_written_beside_its_name_in_its_page(gold: list, parse_once) -> None:
    by_page: dict[str, list] = {}
    for q in gold:
        by_page.setdefault(q.page, []).append(q)
    for name, questions in by_page.items():
        sections = [plain(s.text) for s in parse_once((LIBRARY / name).read_bytes(), name).sections]
        for q in questions:
            assert any(re.search(rf"(?<![\w.]){re.escape(q.api)}(?!\w)", text) for text in sections), q


def test_the_checked_in_set_is_what_the_generator_makes_of_its_pages(gold: list, tmp_path: Path, parse_once) -> None:
    """Regenerated from only its pages, the set keeps every question, except those whose name another page
    (left out here) also documents, which the full corpus would drop: there are none."""
    for name in {q.page for q in gold}:
        shutil.copy(LIBRARY / name, tmp_path / name)
    assert set(gold) <= set(generate(tmp_path, count=10_000, per_page=10_000))


@pytest.mark.parametrize("answer, gold, right", [
    ("functools", "functools", True), ("The `functools` module.", "functools", True),
    ("functools.lru_cache", "functools", False),  # a dotted name is another name ("os.path" is not "os")
    ("os.path", "os", False), ("os", "os.path", False),
    ("It is in os.path.", "os.path", True), ("posix", "os", False), ("\n\nshutil\nos", "os", False),
])
def test_an_answer_is_right_when_its_first_line_names_the_module(answer: str, gold: str, right: bool) -> None:
    assert is_right(answer, gold) is right
