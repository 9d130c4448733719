"""Admission control: at most APPLIANCE_MAX_QUEUE generation requests inside the server at once.

A request takes its slot when it is accepted, before retrieval or tokenization, so that under overload the
excess is refused at once (503 + Retry-After) instead of after the work that precedes the engine's own queue
check. The slot is given back when the request's stream ends, is closed, or is garbage-collected.
Used from the event loop only (no lock).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import TypeVar

from appliance.errors import QueueFullError

T = TypeVar("T")


class Admission:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.taken = 0

    def check(self) -> None:
        """Raise QueueFullError if no slot is free now: a route refuses with it before any work of its own
        (`deps.generating_principal`); `hold` checks again when it takes the slot."""
        if self.taken >= self.limit:
            raise QueueFullError(f"the engine queue is full ({self.limit} requests); retry shortly")

    async def hold(self, stream: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
        """`stream`, holding a slot until it is over. Raises QueueFullError at once when none is free."""
        self.check()
        self.taken += 1
        held = self._held(stream)
        await anext(held)  # started, so its `finally` runs however it ends (even unread, when collected)
        return held

    async def _held(self, stream: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
        try:
            yield None  # type: ignore[misc]  # the priming step of `hold`, never seen by the caller
            async with aclosing(stream):
                async for item in stream:
                    yield item
        finally:
            self.taken -= 1
