"""The paged KV pool's bookkeeping: block tables, refcounts and the exact prefix cache.

A full block is identified by a chained hash `h(parent_hash, its token ids, salt)`; the salt covers the
model, dtype and RoPE settings, so a cached block is only reused by the exact same computation. Blocks
holding reused (document-cache) KV, from a request's `reuse_from` on, chain under the request's
`reuse_salt` instead (its mode and settings): only a request of the same kind reuses them, and they never
count as exact prefix-cache hits. A hit is verified against the block's stored token ids. Blocks whose
refcount drops to zero stay in the cache (and in an LRU free queue) until a new allocation needs them.
This file touches no tensors.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from appliance.engine.request import Request


def block_hash(parent: int, tokens: Sequence[int], salt: bytes) -> int:
    """Stable (cross-process) 64-bit chained hash of one full block."""
    h = hashlib.blake2b(digest_size=8, key=salt[:64])
    h.update(parent.to_bytes(8, "little", signed=False))
    h.update(np.asarray(tokens, dtype=np.int64).tobytes())
    return int.from_bytes(h.digest(), "little")


class BlockManager:
    """Allocates blocks to requests and shares identical prefixes between them.

    Contract: `lookup_prefix` has no side effects; `allocate` either grows the request's block table so
    it can hold `num_computed_tokens + num_new_tokens` tokens (taking the given prefix hits first) or
    changes nothing and returns False; `free` releases a request's blocks (they stay cached).
    """

    def __init__(self, num_blocks: int, block_size: int, salt: bytes, enable_prefix_caching: bool = True) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.salt = salt
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_hashes: list[int | None] = [None] * num_blocks
        self.block_tokens: list[tuple[int, ...] | None] = [None] * num_blocks
        self.cached: dict[int, int] = {}  # hash -> block id
        self.free_queue: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self.prefix_queries = 0  # tokens looked up
        self.prefix_hits = 0  # tokens found with exact KV
        self.reused_prefix_hits = 0  # tokens found with reused (blended) KV, under a request's `reuse_salt`

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    def usage(self) -> float:
        """Fraction of blocks held by running requests."""
        return 1.0 - len(self.free_queue) / self.num_blocks

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _exact_blocks(self, req: Request) -> int | None:
        """How many leading blocks of the request hold exact KV (None: all of them)."""
        return None if req.reuse_from is None else req.reuse_from // self.block_size

    def _salt(self, req: Request, block_index: int) -> bytes:
        """The chain salt of a request's block: the exact one, unless the block holds reused KV."""
        exact = self._exact_blocks(req)
        return self.salt if exact is None or block_index < exact else req.reuse_salt

    def lookup_prefix(self, req: Request) -> list[int]:
        """Cached blocks matching the request's leading full blocks; the last token is never covered."""
        if not self.enable_prefix_caching or req.doc_mode == "off":
            return []
        hits: list[int] = []
        parent = 0
        bs = self.block_size
        for start in range(0, (req.num_tokens - 1) // bs * bs, bs):
            tokens = tuple(req.token_ids[start:start + bs])
            parent = block_hash(parent, tokens, self._salt(req, start // bs))
            block = self.cached.get(parent)
            if block is None or self.block_tokens[block] != tokens:
                break
            hits.append(block)
        return hits

    def allocate(self, req: Request, num_new_tokens: int, prefix_hits: Sequence[int] = ()) -> bool:
        """Make room for `num_new_tokens` more tokens of `req` (after taking `prefix_hits` on first admission)."""
        hits_in_free = sum(1 for b in prefix_hits if self.ref_counts[b] == 0)
        computed = req.num_computed_tokens + len(prefix_hits) * self.block_size
        needed = self.blocks_for(computed + num_new_tokens) - len(req.block_table) - len(prefix_hits)
        if needed > len(self.free_queue) - hits_in_free:
            return False
        for block in prefix_hits:
            if self.ref_counts[block] == 0:
                del self.free_queue[block]
            self.ref_counts[block] += 1
            req.block_table.append(block)
        if prefix_hits:
            req.num_computed_tokens = computed
            req.num_hashed_blocks = len(prefix_hits)
        for _ in range(max(needed, 0)):
            block, _ = self.free_queue.popitem(last=False)
            self._evict(block)
            self.ref_counts[block] = 1
            req.block_table.append(block)
        return True

    def record_lookup(self, req: Request, hits: int) -> None:
        """Count a first admission in the prefix-cache counters (vLLM's queries/hits, in tokens)."""
        exact_blocks = self._exact_blocks(req)
        exact = hits if exact_blocks is None else min(hits, exact_blocks)
        self.prefix_queries += req.num_tokens
        self.prefix_hits += exact * self.block_size
        self.reused_prefix_hits += (hits - exact) * self.block_size

    def commit_full_blocks(self, req: Request) -> None:
        """Register the request's newly computed full blocks in the prefix cache (`off` requests: never)."""
        if not self.enable_prefix_caching or req.doc_mode == "off":
            return
        bs = self.block_size
        full = req.num_computed_tokens // bs
        parent = (self.block_hashes[req.block_table[req.num_hashed_blocks - 1]] or 0) if req.num_hashed_blocks else 0
        for i in range(req.num_hashed_blocks, full):
            tokens = tuple(req.token_ids[i * bs:(i + 1) * bs])
            parent = block_hash(parent, tokens, self._salt(req, i))
            block = req.block_table[i]
            if parent not in self.cached:
                self.cached[parent] = block
            self.block_hashes[block] = parent
            self.block_tokens[block] = tokens
        req.num_hashed_blocks = max(req.num_hashed_blocks, full)

    def free(self, req: Request) -> None:
        """Release the request's blocks, tail first, so the tail is evicted before the shared prefix."""
        for block in reversed(req.block_table):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                self.free_queue[block] = None
        req.block_table = []
        req.num_hashed_blocks = 0

    def reset_prefix_cache(self) -> int:
        """Forget the prefix cache's entries for every free block (benchmarks: each round meets the prompts as
        new); blocks in use keep theirs. Returns how many entries were dropped."""
        dropped = 0
        for block in self.free_queue:
            if self.block_hashes[block] is not None:
                self._evict(block)
                dropped += 1
        return dropped

    def _evict(self, block: int) -> None:
        h = self.block_hashes[block]
        if h is not None and self.cached.get(h) == block:
            del self.cached[h]
        self.block_hashes[block] = None
        self.block_tokens[block] = None
