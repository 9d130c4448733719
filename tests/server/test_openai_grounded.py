"""Grounded extraction: a RAG chat with a JSON schema answers with fields, each cited by JSON pointer to the
passages that hold its value, through the official `openai` client against a real server."""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel, Field

from tests.server.conftest import Server


class Landing(BaseModel):
    mission: str = Field(max_length=30)
    year: int = Field(ge=1900, le=2100)


class Volcano(BaseModel):
    name: str = Field(max_length=30)
    planet: str = Field(max_length=20)
    height_km: int = Field(ge=0, le=100)


@pytest.fixture
def client(rag_server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{rag_server.url}/v1", api_key="unused", max_retries=0)


def _extract(client: openai.OpenAI, schema: type[BaseModel], question: str, **extra: object):
    return client.chat.completions.create(
        model="smollm2", temperature=0, max_tokens=80, messages=[{"role": "user", "content": question}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": schema.__name__, "schema": schema.model_json_schema()}},
        extra_body={"rag": {"collection": "space", "k": 3}}, **extra)


@pytest.mark.parametrize(("schema", "question"), [
    (Landing, "Which mission landed on the Moon, and in what year?"),
    (Volcano, "What is the tallest volcano in the solar system, on which planet, and how high in km?"),
])
def test_each_extracted_value_cites_passages_that_contain_it(client: openai.OpenAI, schema: type[BaseModel],
                                                             question: str) -> None:
    resp = _extract(client, schema, question)
    content = resp.choices[0].message.content
    value = schema.model_validate_json(content)  # the schema holds: the grammar enforced it
    assert "[" not in content  # no citation markers inside the JSON
    sources = {s["n"]: s for s in resp.model_extra["sources"]}
    citations = resp.model_extra["citations"]
    assert set(citations) == {f"/{name}" for name in schema.model_fields}  # one entry per leaf, by pointer
    supported = 0
    for pointer, field in citations.items():
        assert field["value"] == getattr(value, pointer[1:])
        if field["status"] == "supported":
            supported += 1
            for passage in field["passages"]:
                assert sources[passage["n"]]["chunk_id"] == passage["chunk_id"]
                assert str(field["value"]).casefold() in sources[passage["n"]]["text"].casefold()
                assert str(field["value"]).casefold() in passage["quote"].casefold()
        else:
            assert field["status"] == "not_found" and field["passages"] == []
            assert all(str(field["value"]).casefold() not in s["text"].casefold() for s in sources.values())
    assert supported >= 1  # the embedded model copies at least one value from the passages


def test_grounded_extraction_streams_its_field_citations_last(client: openai.OpenAI) -> None:
    question = "Which mission landed on the Moon, and in what year?"
    whole = _extract(client, Landing, question)
    chunks = list(_extract(client, Landing, question, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[-1].model_extra["citations"] == whole.model_extra["citations"]


def test_an_invalid_schema_with_rag_is_refused_before_retrieval(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Which mission landed on the Moon?"}],
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}},
            extra_body={"rag": {"collection": "space"}})
    assert "strin" in json.dumps(caught.value.body)
