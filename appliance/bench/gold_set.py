"""The gold-answer question set: questions whose right answer is a Python version, taken from the version notes
of the python3.11-doc library pages ("New in version 3.2." / "Changed in version 3.4: <what changed>").

Method (deterministic; `appliance bench gold-set --kind versions` regenerates `data/pydoc_gold.json`):
1. Every note inside a documented API entry (`<dl class="py ...">` whose `<dt id="...">` names it, e.g.
   `functools.lru_cache`) becomes a candidate: the API, the kind (added / changed), the version, and the note's
   own text when it has one (its first sentence, at most 160 characters).
2. A candidate is dropped when its question would be ambiguous: the same (API, kind, text) with two versions, an
   "added" note with no text for an API that has two of them, a "changed" note with no text.
3. A candidate is kept only when the page as the appliance ingests it (`retrieval.parse.html.parse_html`) says
   it: one section holds the note's words and its own text ("Changed in version 3.4: Added the ...") at most
   `NEAR` characters after the API's last name.
4. The pages with candidates are shuffled with a fixed seed, and each in turn gives up to `PER_PAGE` of its
   candidates (shuffled with the same generator) until there are `COUNT` questions: few pages, so a benchmark
   ingests and pre-encodes little.

The question asks for the version only ("Answer with the version number only."); an answer is right when the
gold version appears in its first line (`appliance/evaluation/gold_answer.py` `is_right`).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

GOLD_SET = Path(__file__).parent / "data" / "pydoc_gold.json"
COUNT = 240
PER_PAGE = 4
SEED = 0
MAX_NOTE_CHARS = 160
NEAR = 1500  # characters between an API's name and its note in the ingested text, at most
SHORT_ANSWER = "Answer with the version number only."

_VERSION = re.compile(r"(New|Changed) in version (\d+\.\d+)")
_FIRST_SENTENCE = re.compile(r"^(.+?[.!?])(?:\s|$)")


@dataclass(frozen=True)
class GoldQuestion:
    """One question with its gold answer, and where the answer is written."""

    question: str
    answer: str  # a version, e.g. "3.4"
    page: str  # the library page's file name
    api: str
    kind: str  # added | changed
    note: str  # the note's own words ("" for a bare "New in version X.")


@dataclass
class _Note:
    api: str
    kind: str
    version: str
    text: str


class _NoteParser(HTMLParser):
    """Collects the version notes of one page, each with the innermost documented API around it."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.apis: list[str | None] = []  # one per open <dl>: its API name once its <dt id> is seen
        self.notes: list[_Note] = []
        self._note: _Note | None = None
        self._note_depth = 0  # open <div>s inside the current note's <div class="version...">
        self._in_dt = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        classes = (attr.get("class") or "").split()
        if tag == "dl":
            self.apis.append(None)
        elif tag == "dt" and self.apis and self.apis[-1] is None and attr.get("id") and "sig" in classes:
            self.apis[-1] = attr["id"]
        elif tag == "div" and self._note is not None:
            self._note_depth += 1
        elif tag == "div" and {"versionadded", "versionchanged"} & set(classes):
            api = next((name for name in reversed(self.apis) if name), None)
            if api is not None:
                self._note = _Note(api, "added" if "versionadded" in classes else "changed", "", "")
                self._note_depth = 0

    def handle_endtag(self, tag: str) -> None:
        if tag == "dl" and self.apis:
            self.apis.pop()
        elif tag == "div" and self._note is not None:
            if self._note_depth:
                self._note_depth -= 1
            else:
                self._finish()

    def handle_data(self, data: str) -> None:
        if self._note is not None:
            self._note.text += data

    def _finish(self) -> None:
        note, self._note = self._note, None
        assert note is not None
        text = " ".join(note.text.split())
        match = _VERSION.match(text)
        if match is None:
            return
        note.version = match.group(2)
        rest = text[match.end():].lstrip(":. ")
        sentence = _FIRST_SENTENCE.match(rest)
        note.text = (sentence.group(1) if sentence else rest).strip()
        self.notes.append(note)


def page_notes(html: str) -> list[_Note]:
    parser = _NoteParser()
    parser.feed(html)
    parser.close()
    return parser.notes


def _question(note: _Note) -> str:
    if note.kind == "added" and not note.text:
        body = f"In which Python version was {note.api} added?"
    elif note.kind == "added":
        body = f"In which Python version was this added to {note.api}: \"{note.text}\"?"
    else:
        body = f"In which Python version did {note.api} change like this: \"{note.text}\"?"
    return f"{body} {SHORT_ANSWER}"


def _unambiguous(notes: list[_Note]) -> list[_Note]:
    versions: dict[tuple[str, str, str], set[str]] = {}
    for note in notes:
        versions.setdefault((note.api, note.kind, note.text), set()).add(note.version)
    bare_added: dict[str, int] = {}
    for note in notes:
        if note.kind == "added" and not note.text:
            bare_added[note.api] = bare_added.get(note.api, 0) + 1
    return [n for n in notes
            if len(versions[(n.api, n.kind, n.text)]) == 1 and len(n.text) <= MAX_NOTE_CHARS
            and not (n.kind == "changed" and not n.text) and bare_added.get(n.api, 0) <= 1]


def plain(text: str) -> str:
    """Text without Markdown emphasis and code marks, whitespace collapsed (the set quotes the HTML's text)."""
    return " ".join(re.sub(r"[*`]", "", text).split())


def _stated_in_page(note: _Note, section_texts: list[str]) -> bool:
    """The note as ingested: its words and own text together, at most `NEAR` characters after a mention of the
    API's last name (the parser may drop a note, or keep another API's note in the same section)."""
    said = f"{'New' if note.kind == 'added' else 'Changed'} in version {note.version}"
    said += f": {plain(note.text)[:40]}" if note.text else "."
    last_name = note.api.rsplit(".", 1)[-1]
    for text in map(plain, section_texts):
        at = text.find(said)
        while at >= 0:
            if last_name in text[max(0, at - NEAR):at]:
                return True
            at = text.find(said, at + 1)
    return False


def generate(corpus: Path, count: int = COUNT, per_page: int = PER_PAGE, seed: int = SEED) -> list[GoldQuestion]:
    """The gold set over the `*.html` pages of `corpus` (the method in the module doc)."""
    from retrieval.errors import CorruptFileError
    from retrieval.parse.html import parse_html

    candidates: list[GoldQuestion] = []
    for page in sorted(corpus.glob("*.html")):
        data = page.read_bytes()
        notes = _unambiguous(page_notes(data.decode("utf-8", errors="replace")))
        if not notes:
            continue
        try:
            sections = [section.text for section in parse_html(data, page.name).sections]
        except CorruptFileError:  # a page with no readable main text
            continue
        candidates += [GoldQuestion(_question(n), n.version, page.name, n.api, n.kind, n.text)
                       for n in notes if _stated_in_page(n, sections)]
    return pick_per_page(candidates, count, per_page, seed)


def pick_per_page(candidates: list[GoldQuestion], count: int, per_page: int, seed: int) -> list[GoldQuestion]:
    """Step 4 of the method: pages shuffled with `seed`, up to `per_page` questions of each until `count`."""
    by_page: dict[str, list[GoldQuestion]] = {}
    for question in sorted(set(candidates), key=lambda q: (q.page, q.api, q.kind, q.answer, q.note)):
        by_page.setdefault(question.page, []).append(question)
    rng = random.Random(seed)
    names = sorted(by_page)
    rng.shuffle(names)
    chosen: list[GoldQuestion] = []
    for name in names:
        rng.shuffle(by_page[name])
        chosen += by_page[name][:min(per_page, count - len(chosen))]
    return chosen


def load_gold(limit: int | None = None, path: Path = GOLD_SET) -> list[GoldQuestion]:
    """The checked-in gold set (the first `limit` questions)."""
    items = json.loads(path.read_text())["questions"]
    return [GoldQuestion(**item) for item in items][:limit]


