"""The cross-request document KV cache: a chunk tier of position-free passage KV next to the exact prefix cache.

layout.py   where the passages sit in a prompt, and the key of a passage's KV
tier.py     the in-memory chunk tier: entries, pins, cost-aware (GDSF) eviction, invalidation by document
disk.py     the persistent tier under the data dir (optionally 8-bit)
blend.py    tensor work: move chunk KV into a request's blocks, choose the tokens to recompute
manager.py  the engine-facing orchestration: lookups, encode jobs (each chunk encoded once), fills
"""
