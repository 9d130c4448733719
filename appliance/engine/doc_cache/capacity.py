"""How much of a collection the disk tier can hold, decided before anything is encoded (`appliance warm`).

Writing more than the budget would make the disk tier evict, oldest first, what the same warm wrote minutes
before; so a warm that does not fit encodes only the passages that do, in the order given, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

FILE_OVERHEAD_BYTES = 1024  # a safetensors header and its metadata, per passage file


@dataclass(frozen=True)
class WarmPlan:
    """Which uncached passages a warm encodes (`chosen`, indexes into the passages given) and the figures."""

    passages: int
    cached: int  # already in memory or on disk
    chosen: list[int]
    tokens: int  # of every passage
    bytes_per_token: int  # on disk, in the tier's format
    need_bytes: int  # what every uncached passage would take on disk
    room_bytes: int  # the disk budget left

    @property
    def fits(self) -> bool:
        return self.need_bytes <= self.room_bytes

    @property
    def left_out(self) -> int:
        return self.passages - self.cached - len(self.chosen)


def plan_warm(lengths: list[int], cached: list[bool], bytes_per_token: int, room_bytes: int) -> WarmPlan:
    """`lengths[i]`, `cached[i]`: passage i's token count and whether it is cached already. Uncached passages are
    taken in order while they fit in `room_bytes` (a passage too large for what is left is passed over)."""
    chosen, used, need = [], 0, 0
    for i, (length, hit) in enumerate(zip(lengths, cached, strict=True)):
        if hit:
            continue
        size = length * bytes_per_token + FILE_OVERHEAD_BYTES
        need += size
        if used + size <= room_bytes:
            chosen.append(i)
            used += size
    return WarmPlan(len(lengths), sum(cached), chosen, sum(lengths), bytes_per_token, need, max(room_bytes, 0))
