"""BM25 index of one collection (bm25s), rows mapped to chunk ids. Built whole (bm25s has no incremental
add), saved and loaded as a folder inside the collection's snapshot."""

from __future__ import annotations

import logging
from pathlib import Path

import bm25s
import numpy as np

from retrieval.filters import AllowedIds

logging.getLogger("bm25s").setLevel(logging.WARNING)


def _tokenize(texts: list[str]) -> list[list[str]]:
    tokens = bm25s.tokenize(texts, lower=True, stopwords="en", return_ids=False, show_progress=False)
    assert isinstance(tokens, list)
    return tokens


class LexicalIndex:
    def __init__(self, ids: np.ndarray, retriever: bm25s.BM25 | None) -> None:
        self.ids = ids
        self.retriever = retriever

    @classmethod
    def build(cls, ids: np.ndarray, texts: list[str]) -> LexicalIndex:
        if not len(ids):
            return cls(ids, None)
        retriever = bm25s.BM25()
        retriever.index(_tokenize(texts), show_progress=False)
        return cls(np.asarray(ids, dtype=np.int64), retriever)

    def search(self, query: str, k: int, allowed: AllowedIds | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, chunk ids), best first; only documents with a positive score (and, with `allowed`, only
        those chunk ids: the others' scores are masked to zero inside the ranking)."""
        empty = (np.zeros(0, np.float32), np.zeros(0, np.int64))
        if self.retriever is None or (allowed is not None and not len(allowed)):
            return empty
        vocab = self.retriever.vocab_dict
        tokens = [t for t in _tokenize([query])[0] if t in vocab]
        if not tokens:
            return empty
        k = min(k, len(self.ids))
        mask = None if allowed is None else allowed.contains(self.ids).astype(np.float32)
        rows, scores = self.retriever.retrieve([tokens], k=k, show_progress=False, n_threads=1, weight_mask=mask)
        rows, scores = rows[0], scores[0]
        keep = scores > 0
        return scores[keep].astype(np.float32), self.ids[rows[keep]]

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "ids.npy", self.ids)
        if self.retriever is not None:
            self.retriever.save(str(folder), show_progress=False)

    @classmethod
    def load(cls, folder: Path) -> LexicalIndex:
        ids = np.load(folder / "ids.npy")
        retriever = bm25s.BM25.load(str(folder)) if len(ids) else None
        return cls(ids, retriever)
