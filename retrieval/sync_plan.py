"""What a folder sync must do, decided without touching the store: `plan_sync(files, documents)`.

A collection kept equal to a folder holds one ready document per distinct content of the folder's supported
files, recorded under one of that content's file names (`source`). Document ids come from the collection and
the content hash (`retrieval.store.document_id`), so a content is stored once: two files with the same bytes
share one document (the second is a duplicate), and a file renamed with its bytes unchanged keeps its document
under its new name (a rename: no parse, no embedding).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class StoredDoc:
    """A ready document of the collection, as the plan sees it."""

    doc_id: str
    source: str
    content_hash: str


@dataclass(frozen=True)
class Rename:
    doc_id: str
    old_source: str
    new_source: str


@dataclass
class SyncPlan:
    """`add`: sources to ingest that no document holds; `change`: sources to ingest whose current document
    (in `replaced`, by source) the new version replaces when its job publishes; `remove`: documents whose
    content is in no file; `rename`: documents to record under another file's name; `unchanged`: sources
    whose document is already right; `duplicates`: source -> the source whose document holds the same bytes;
    `failed_before`: sources whose content already failed to ingest (not retried until it changes)."""

    add: list[str] = field(default_factory=list)
    change: list[str] = field(default_factory=list)
    replaced: dict[str, StoredDoc] = field(default_factory=dict)
    remove: list[StoredDoc] = field(default_factory=list)
    rename: list[Rename] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    duplicates: dict[str, str] = field(default_factory=dict)
    failed_before: list[str] = field(default_factory=list)

    @property
    def ingest(self) -> list[str]:
        return sorted(self.add + self.change)

    @property
    def empty(self) -> bool:
        """Nothing to write: the collection already equals the folder."""
        return not (self.add or self.change or self.remove or self.rename)


def plan_sync(
    files: Mapping[str, str], documents: Iterable[StoredDoc], failed: Mapping[str, str] | None = None
) -> SyncPlan:
    """The plan that makes the collection's `documents` equal the folder's `files` ({source: sha256 hex}).

    `failed` ({source: content hash}) lists files whose content failed to ingest before: they are not tried
    again, and a document still held under such a source (its previous version) is removed.
    Deterministic: ties (several files with one content) go to the document's current source if it is one of
    them, else to the first source in sorted order.
    """
    failed = failed or {}
    docs = list(documents)
    by_hash = {d.content_hash: d for d in docs}
    groups: dict[str, list[str]] = {}
    for source in sorted(files):
        groups.setdefault(files[source], []).append(source)

    plan = SyncPlan()
    kept: set[str] = set()  # doc ids that stay (unchanged or renamed)
    to_ingest: list[str] = []
    for content_hash, sources in groups.items():
        doc = by_hash.get(content_hash)
        if doc is not None:
            kept.add(doc.doc_id)
            keep = doc.source if doc.source in sources else sources[0]
            if keep == doc.source:
                plan.unchanged.append(keep)
            else:
                plan.rename.append(Rename(doc.doc_id, doc.source, keep))
        else:
            keep = sources[0]
            if failed.get(keep) == content_hash:
                plan.failed_before.append(keep)
            else:
                to_ingest.append(keep)
        plan.duplicates.update({s: keep for s in sources if s != keep})

    leaving = {d.source: d for d in docs if d.doc_id not in kept}  # their content is in no file any more
    for source in to_ingest:
        old = leaving.pop(source, None)
        if old is None:
            plan.add.append(source)
        else:  # replaced atomically when the new version publishes: never absent in between
            plan.change.append(source)
            plan.replaced[source] = old
    plan.remove = sorted((d for d in docs if d.doc_id not in kept and d.source in leaving), key=lambda d: d.source)
    plan.rename.sort(key=lambda r: r.new_source)
    return plan
