"""Where the passages sit in a prompt, and the key under which a passage's KV is cached."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ChunkSpan:
    """One passage's own tokens inside a prompt: `prompt[start:start + length]`."""

    start: int
    length: int
    doc_id: str = ""
    chunk_id: int | None = None

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass(frozen=True)
class PromptLayout:
    """A prompt is `[prefix][..chunk..][..chunk..]...[rest]`; chunks are encoded once after `prefix`.

    Every chunk's KV is computed in the context of `prompt[:prefix_len]` (the shared system prefix) and
    then reused at whatever position the chunk takes in later prompts. Tokens outside the chunks (passage
    numbers, the question) are always computed.
    """

    prefix_len: int
    chunks: tuple[ChunkSpan, ...]

    def validate(self, num_tokens: int) -> None:
        """Raise ValueError unless the spans are ordered, disjoint, non-empty and inside the prompt."""
        edge = self.prefix_len
        for span in self.chunks:
            if span.length <= 0 or span.start < edge or span.end > num_tokens - 1:
                raise ValueError(f"bad chunk span {span} in a prompt of {num_tokens} tokens")
            edge = span.end


def chunk_key(prefix: list[int] | tuple[int, ...], chunk: list[int] | tuple[int, ...], salt: bytes) -> str:
    """Hex key of a chunk's KV: the model/dtype/RoPE salt, the prefix it was encoded after, its token ids."""
    h = hashlib.blake2b(digest_size=16, key=salt[:64])
    h.update(np.asarray(prefix, dtype=np.int64).tobytes())
    h.update(b"|")
    h.update(np.asarray(chunk, dtype=np.int64).tobytes())
    return h.hexdigest()
