"""The second gold-answer set: "which module provides X?", answered by reading the passage that documents X.

The version set (`gold_set.py`) is near the floor for the embedded 135M model (off answers about one question
in ten), so its accuracy ratios cannot tell variants apart. Here the answer is a name written in the passage
next to the question's own words (`functools.lru_cache(...)`), which a small model can copy: a reading task
where damage to the reused KV shows as a wrong or missing name.

Method (deterministic; `appliance bench gold-set --kind modules` regenerates `data/pydoc_modules_gold.json`):
1. Every function or class documented directly in a module of a page (`<dl class="py function|class">` whose
   `<dt id>` is `<module>.<name>`, the module declared on that page by an `id="module-<module>"` anchor; the
   longest such module wins, so `os.path.join` belongs to `os.path`) is a candidate.
2. A name documented in two modules anywhere in the corpus is dropped (which module is meant would be
   ambiguous), as are names of fewer than `MIN_NAME` characters and names that are their module's own last
   name (`fcntl.fcntl`: the question would give the answer away).
3. A candidate is kept only when the page as the appliance ingests it (`retrieval.parse.html.parse_html`)
   writes `<module>.<name>` in one section.
4. As the version set: pages shuffled with a fixed seed, up to `PER_PAGE` questions of each, `COUNT` in all.

An answer is right when its first line names the module as a word of its own (`evaluation.gold_answer.is_right`).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from appliance.bench.gold_set import COUNT, PER_PAGE, SEED, GoldQuestion, pick_per_page, plain

MODULE_SET = Path(__file__).parent / "data" / "pydoc_modules_gold.json"
MIN_NAME = 4
SHORT_ANSWER = "Answer with the module name only."


class _ApiParser(HTMLParser):
    """The modules a page declares and the functions and classes it documents (kind, dotted id)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.modules: set[str] = set()
        self.apis: list[tuple[str, str]] = []
        self._kinds: list[str | None] = []  # one per open <dl>: "function", "class" or None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        anchor = attr.get("id") or ""
        if anchor.startswith("module-"):
            self.modules.add(anchor.removeprefix("module-"))
        classes = (attr.get("class") or "").split()
        if tag == "dl":
            kind = next((k for k in ("function", "class") if classes[:2] == ["py", k]), None)
            self._kinds.append(kind)
        elif tag == "dt" and self._kinds and self._kinds[-1] and "sig" in classes and anchor:
            self.apis.append((self._kinds[-1], anchor))
            self._kinds[-1] = None  # the entry's first signature names it

    def handle_endtag(self, tag: str) -> None:
        if tag == "dl" and self._kinds:
            self._kinds.pop()


def page_apis(html: str) -> list[tuple[str, str, str]]:
    """(kind, module, name) of each function or class a page documents directly in one of its modules."""
    parser = _ApiParser()
    parser.feed(html)
    parser.close()
    found = []
    for kind, api in parser.apis:
        owners = [m for m in parser.modules if api.startswith(m + ".") and "." not in api[len(m) + 1:]]
        if owners:
            module = max(owners, key=len)
            found.append((kind, module, api[len(module) + 1:]))
    return found


def question_for(kind: str, name: str) -> str:
    what = f"the class {name}" if kind == "class" else f"the function {name}()"
    return f"Which Python standard library module provides {what}? {SHORT_ANSWER}"


def generate(corpus: Path, count: int = COUNT, per_page: int = PER_PAGE, seed: int = SEED) -> list[GoldQuestion]:
    """The module set over the `*.html` pages of `corpus` (the method in the module doc)."""
    from retrieval.errors import CorruptFileError
    from retrieval.parse.html import parse_html

    per_page_apis: dict[str, list[tuple[str, str, str]]] = {}
    owners: dict[str, set[str]] = {}
    for page in sorted(corpus.glob("*.html")):
        apis = page_apis(page.read_text(encoding="utf-8", errors="replace"))
        per_page_apis[page.name] = apis
        for _, module, name in apis:
            owners.setdefault(name, set()).add(module)
    candidates = []
    for page_name, apis in per_page_apis.items():
        apis = [(kind, module, name) for kind, module, name in apis
                if len(owners[name]) == 1 and len(name) >= MIN_NAME and name != module.rsplit(".", 1)[-1]]
        if not apis:
            continue
        try:
            texts = [plain(s.text) for s in parse_html((corpus / page_name).read_bytes(), page_name).sections]
        except CorruptFileError:  # a page with no readable main text
            continue
        for kind, module, name in apis:
            written = re.compile(rf"(?<![\w.]){re.escape(module)}\.{re.escape(name)}(?!\w)")
            if any(written.search(text) for text in texts):
                candidates.append(GoldQuestion(question_for(kind, name), module, page_name, f"{module}.{name}",
                                               "module", ""))
    return pick_per_page(candidates, count, per_page, seed)
