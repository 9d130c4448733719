"""The cross-request document KV cache: a chunk tier of position-free passage KV next to the exact prefix cache.

layout.py   where the passages sit in a prompt, and the key of a passage's KV
tier.py     the in-memory chunk tier: entries, pins, LFU-with-aging eviction, invalidation by document
disk.py     the persistent tier under the data dir (optionally 8-bit)
blend.py    tensor work: move chunk KV into a request's blocks, measure what to recompute
relevance.py  query-aware selection: the attention the question pays each earlier token
capacity.py how much of a collection a warm can write to the disk tier without evicting
manager.py  the engine-facing orchestration: lookups, encode jobs (each chunk encoded once), fills
"""
