"""`filters` of `/api/search`, `/api/ask` and chat's `rag` (HTTP shape; `retrieval.filters.SearchFilters` inside),
and the tags of an upload."""

from __future__ import annotations

import json

from pydantic import ConfigDict, Field, model_validator

from appliance.server.errors import ApiError
from appliance.server.schemas_base import RequestModel
from retrieval.filters import CONTENT_TYPES, MAX_DOC_IDS, MAX_TAGS, FilterError, SearchFilters, parse_tag_args


class FiltersIn(RequestModel):
    """Only documents that pass every given part may answer: all `tags` with these values, `modified` at or
    after `modified_after`, a `content_type` among these, a `doc_id` among these. Applied inside the search
    (before the top-k cut), like the key's collections."""

    model_config = ConfigDict(strict=True, extra="forbid")

    tags: dict[str, str] | None = Field(None, max_length=MAX_TAGS, description='e.g. {"team": "hr"}')
    modified_after: str | None = Field(None, max_length=64, description="ISO 8601 date or date-time (UTC when "
                                       "it has no offset), e.g. 2024-05-01 or 2024-05-01T12:00:00+02:00")
    content_type: list[str] | None = Field(None, max_length=len(CONTENT_TYPES),
                                           description="parser kinds: " + ", ".join(CONTENT_TYPES))
    doc_ids: list[str] | None = Field(None, max_length=MAX_DOC_IDS)

    @model_validator(mode="after")
    def _valid(self) -> FiltersIn:
        self.search_filters()  # FilterError is a ValueError: a 422 with its message
        return self

    def search_filters(self) -> SearchFilters:
        return SearchFilters.of(self.tags, self.modified_after, self.content_type, self.doc_ids)


def search_filters(filters: FiltersIn | None) -> SearchFilters | None:
    return None if filters is None else filters.search_filters()


def upload_tags(json_tags: list[str], pairs: list[str]) -> dict[str, str]:
    """An upload's tags: form fields `tags` (a JSON object {key: value}) and `tag` (`key=value`, repeatable).
    Raises ApiError 422."""
    tags: dict[str, str] = {}
    try:
        for text in json_tags:
            value = json.loads(text)
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise FilterError('the tags field is a JSON object of strings, e.g. {"team": "hr"}')
            tags.update(value)
        tags.update(parse_tag_args(pairs))
        return dict(SearchFilters.of(tags=tags).tags)
    except (ValueError, FilterError) as exc:  # json.JSONDecodeError is a ValueError
        raise ApiError(422, "invalid_request", f"tags: {exc}") from exc
