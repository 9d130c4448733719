"""Pydantic models of the OpenAI API's structured output and tools (the HTTP boundary only): `response_format`,
vLLM's `guided_*` parameters, `tools` and `tool_choice`, and the assistant's tool calls in a conversation."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, field_validator

from appliance.engine.grammar import GrammarSpec
from appliance.server.errors import ApiError
from appliance.server.schemas_base import RequestModel

FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"  # OpenAI's rule for function names


class JsonSchemaFormat(RequestModel):
    name: str = Field(default="response", pattern=FUNCTION_NAME)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(RequestModel):
    """`{"type": "text"}` (no constraint), `{"type": "json_object"}` or `{"type": "json_schema", "json_schema":
    {name, schema, strict}}`: the output is JSON, valid against the schema, by constrained decoding."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class FunctionDefinition(RequestModel):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = Field(default=None, max_length=10_000)
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class Tool(RequestModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(RequestModel):
    name: str = Field(pattern=FUNCTION_NAME)


class NamedToolChoice(RequestModel):
    type: Literal["function"] = "function"
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCall(RequestModel):
    name: str = Field(pattern=FUNCTION_NAME)
    arguments: str = Field(max_length=200_000)  # JSON text, as the model wrote it


class ToolCall(RequestModel):
    id: str = Field(max_length=200)
    type: Literal["function"] = "function"
    function: FunctionCall


class StructuredOutputFields(RequestModel):
    """The constraint fields a chat or text completion accepts; at most one of them may be given."""

    response_format: ResponseFormat | None = None
    guided_json: dict[str, Any] | None = None  # vLLM's extra parameters
    guided_regex: str | None = Field(default=None, min_length=1, max_length=10_000)
    guided_choice: list[str] | None = Field(default=None, min_length=1, max_length=1000)
    guided_grammar: str | None = Field(default=None, min_length=1, max_length=100_000)  # xgrammar's EBNF

    @field_validator("guided_choice")
    @classmethod
    def _non_empty_choices(cls, options: list[str] | None) -> list[str] | None:
        if options is not None and not all(options):
            raise ValueError("guided_choice options must be non-empty strings")
        return options

    def grammar(self) -> GrammarSpec | None:
        """The grammar the output must match, or None. Raises ApiError 400 when several are given."""
        given: list[GrammarSpec] = []
        fmt = self.response_format
        if fmt is not None and fmt.type == "json_object":
            given.append(GrammarSpec("json_object"))
        elif fmt is not None and fmt.type == "json_schema":
            if fmt.json_schema is None:
                raise ApiError(400, "invalid_request", 'response_format "json_schema" needs a "json_schema" field')
            given.append(GrammarSpec.json_schema(fmt.json_schema.schema_))
        if self.guided_json is not None:
            given.append(GrammarSpec.json_schema(self.guided_json))
        if self.guided_regex is not None:
            given.append(GrammarSpec("regex", self.guided_regex))
        if self.guided_choice is not None:
            given.append(GrammarSpec("choice", json.dumps(self.guided_choice)))
        if self.guided_grammar is not None:
            given.append(GrammarSpec("ebnf", self.guided_grammar))
        if len(given) > 1:
            raise ApiError(400, "invalid_request",
                           "give at most one of response_format, guided_json, guided_regex, guided_choice and "
                           "guided_grammar")
        return given[0] if given else None
