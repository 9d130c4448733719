"""The gold-answer question set: its generator's rules, its determinism, and that the checked-in set is what the
generator makes from Debian's python3.11-doc pages, every answer written in its page as the appliance reads it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from appliance.bench.gold_eval import accuracy_ratio
from appliance.bench.gold_set import GOLD_SET, SHORT_ANSWER, generate, load_gold, page_notes, plain
from appliance.evaluation.gold_answer import is_right

LIBRARY = Path("/usr/share/doc/python3.11/html/library")

PAGE = """<html><head><title>spam — Spam things</title></head><body><div class="body" role="main">
<section id="module-spam"><h1>spam — Spam things</h1>
<p>The spam module makes spam and eggs for breakfast.</p>
<dl class="py function"><dt class="sig sig-object py" id="spam.fry">spam.fry(eggs)</dt>
<dd><p>Fry the eggs in a pan until they are done.</p>
<div class="versionadded"><p><span class="versionmodified added">New in version 3.2.</span></p></div>
<div class="versionchanged"><p><span class="versionmodified changed">Changed in version 3.4: </span>Added the
<em>crispy</em> option. It is off by default.</p></div>
</dd></dl>
<dl class="py class"><dt class="sig sig-object py" id="spam.Pan">class spam.Pan</dt>
<dd><p>A pan for frying things in, with a handle.</p>
<dl class="py method"><dt class="sig sig-object py" id="spam.Pan.heat">heat()</dt>
<dd><p>Heat the pan up before frying anything.</p>
<div class="versionadded"><p><span class="versionmodified added">New in version 3.6.</span></p></div>
</dd></dl>
<div class="versionadded"><p><span class="versionmodified added">New in version 3.5.</span></p></div>
<div class="versionadded"><p><span class="versionmodified added">New in version 3.7.</span></p></div>
<div class="versionchanged"><p><span class="versionmodified changed">Changed in version 3.8.</span></p></div>
</dd></dl>
<div class="versionadded"><p><span class="versionmodified added">New in version 3.9.</span></p></div>
</section></div></body></html>"""


def test_notes_belong_to_the_innermost_documented_api() -> None:
    notes = [(n.api, n.kind, n.version, n.text) for n in page_notes(PAGE)]
    assert notes == [("spam.fry", "added", "3.2", ""),
                     ("spam.fry", "changed", "3.4", "Added the crispy option."),
                     ("spam.Pan.heat", "added", "3.6", ""),
                     ("spam.Pan", "added", "3.5", ""), ("spam.Pan", "added", "3.7", ""),
                     ("spam.Pan", "changed", "3.8", "")]  # the page-level 3.9 note names no API


def test_ambiguous_notes_make_no_question(tmp_path: Path) -> None:
    (tmp_path / "spam.html").write_text(PAGE)
    questions = generate(tmp_path, count=10, per_page=10)
    asked = {(q.api, q.kind, q.answer) for q in questions}
    # spam.Pan has two bare "added" notes (which version would be right?) and a "changed" note with no text
    assert asked == {("spam.fry", "added", "3.2"), ("spam.fry", "changed", "3.4"), ("spam.Pan.heat", "added", "3.6")}
    fried = next(q for q in questions if q.kind == "changed")
    assert fried.question == f'In which Python version did spam.fry change like this: "Added the crispy option."? ' \
                             f"{SHORT_ANSWER}"


def test_generation_is_deterministic(tmp_path: Path) -> None:
    for page in sorted(LIBRARY.glob("*.html"))[:12]:
        shutil.copy(page, tmp_path / page.name)
    first, second = generate(tmp_path, count=15, per_page=3), generate(tmp_path, count=15, per_page=3)
    assert first == second and len(first) == 15
    assert max(sum(q.page == page for q in first) for page in {q.page for q in first}) <= 3


@pytest.fixture(scope="module")
def gold() -> list:
    return load_gold()


def test_the_checked_in_set_is_large_and_spread(gold: list) -> None:
    assert len(gold) >= 200
    assert len({q.question for q in gold}) == len(gold)
    assert len({q.page for q in gold}) >= 50
    assert json.loads(GOLD_SET.read_text())["generator"].startswith("appliance bench gold-set")


def test_every_gold_answer_is_written_in_its_page(gold: list, parse_once) -> None:
    """As the appliance ingests the page: one section says the note's words and names the API."""
    by_page: dict[str, list] = {}
    for q in gold:
        by_page.setdefault(q.page, []).append(q)
    for page, questions in by_page.items():
        sections = [plain(s.text) for s in parse_once((LIBRARY / page).read_bytes(), page).sections]
        for q in questions:
            words = f"{'New' if q.kind == 'added' else 'Changed'} in version {q.answer}"
            name = q.api.rsplit(".", 1)[-1]
            said = f"{words}: {plain(q.note)[:40]}" if q.note else f"{words}."
            assert any(said in text and name in text for text in sections), q


def test_the_checked_in_set_is_what_the_generator_makes_of_its_pages(gold: list, tmp_path: Path, parse_once) -> None:
    """Regenerated from only the pages it uses, with the same rules, the set keeps every question (a fresh
    shuffle over fewer candidates picks in another order, so only membership is compared)."""
    for page in {q.page for q in gold}:
        shutil.copy(LIBRARY / page, tmp_path / page)
    again = generate(tmp_path, count=10_000, per_page=10_000)
    assert set(gold) <= set(again)


@pytest.mark.parametrize("answer, gold, right", [
    ("3.2", "3.2", True), ("It was added in Python 3.2 [1].", "3.2", True), ("Version 3.2.", "3.2", True),
    ("3.12", "3.2", False), ("13.2", "3.2", False), ("3.2.1", "3.2", True), ("3.1", "3.10", False),
    ("\n\nIn 3.4\nnot 3.2", "3.2", False), ("\n\nIn 3.4\nnot 3.2", "3.4", True), ("", "3.2", False),
])
def test_an_answer_is_right_when_its_first_line_names_the_version(answer: str, gold: str, right: bool) -> None:
    assert is_right(answer, gold) is right


def test_accuracy_ratio_and_its_interval() -> None:
    same = accuracy_ratio([True, False, True, True], [True, False, True, True])
    assert same["ratio"] == same["ratio_low"] == same["ratio_high"] == 1.0 and same["same_verdict"] == 1.0
    half = accuracy_ratio([True] * 40 + [False] * 10, [True, False] * 20 + [False] * 10)
    assert half["ratio"] == 0.5 and half["accuracy"] == 0.4
    assert half["ratio_low"] < 0.5 < half["ratio_high"] and half["ratio_high"] - half["ratio_low"] < 0.4
