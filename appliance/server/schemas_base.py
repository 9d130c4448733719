"""The base of every request body model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class RequestModel(BaseModel):
    """Base of request bodies: strict types (no `false` for an int, no `"5"` for a number), so what the
    OpenAPI schema calls invalid is refused (422) rather than coerced."""

    model_config = ConfigDict(strict=True)
