"""Function calling on any chat model: tools in the prompt, calls forced by a grammar, calls parsed back.

The format is the Hermes one most open chat models are trained on (Qwen2.5, Hermes, SmolLM3): the tools are
listed in the system message as JSON inside `<tools>`; a call is `<tool_call>{"name": ..., "arguments": {...}}
</tool_call>`; a tool's result comes back in a user turn inside `<tool_response>`. A template that renders
`tools` itself gets them instead. With `tool_choice` "required" or a named function, the whole output is the
call's JSON, constrained by a JSON schema built from the tools' parameters, so even a small model returns a
valid call; with "auto" the model may answer in text or call, and calls are parsed from its text.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from appliance.engine.grammar import GrammarSpec
from appliance.engine.tokenizer import ChatMessage, TextTokenizer
from appliance.server.errors import ApiError
from appliance.server.schemas import ChatMessageIn
from appliance.server.schemas_structured import NamedToolChoice, Tool, ToolChoice

_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


@dataclass(frozen=True)
class ToolPlan:
    """How one request uses its tools: the functions offered and whether a call is forced (its grammar)."""

    tools: tuple[Tool, ...]
    grammar: GrammarSpec | None  # set when the output must be a call ("required" or a named function)

    @property
    def forced(self) -> bool:
        return self.grammar is not None


def plan_tools(tools: list[Tool] | None, choice: ToolChoice | None) -> ToolPlan | None:
    """None when no tool may be called (none given, or `tool_choice` "none"). Raises ApiError 400 for a named
    function that is not among the tools."""
    if not tools or choice == "none":
        return None
    if isinstance(choice, NamedToolChoice):
        named = [t for t in tools if t.function.name == choice.function.name]
        if not named:
            raise ApiError(400, "invalid_request", f"tool_choice names {choice.function.name!r}, not in tools")
        return ToolPlan(tuple(tools), call_grammar(named))
    return ToolPlan(tuple(tools), call_grammar(tools) if choice == "required" else None)


def call_grammar(tools: list[Tool]) -> GrammarSpec:
    """A JSON schema whose instances are exactly the calls of `tools`: {"name": one of them, "arguments": what
    its parameters schema allows}."""
    calls = [{"type": "object", "properties": {"name": {"const": t.function.name},
                                               "arguments": t.function.parameters or {"type": "object"}},
              "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    return GrammarSpec.json_schema(calls[0] if len(calls) == 1 else {"anyOf": calls})


def chat_messages(messages: list[ChatMessageIn], plan: ToolPlan | None, tokenizer: TextTokenizer
                  ) -> list[ChatMessage]:
    """The messages as the template reads them: tool calls and results in the Hermes format, and the tools
    described in the system message (unless the template renders `tools` itself)."""
    out: list[ChatMessage] = []
    for m in messages:
        if m.role == "tool":
            out.append(ChatMessage("user", f"<tool_response>\n{m.text()}\n</tool_response>"))
        elif m.role == "assistant" and m.tool_calls:
            calls = "\n".join(f'<tool_call>\n{{"name": {json.dumps(c.function.name)}, "arguments": '
                              f'{c.function.arguments}}}\n</tool_call>' for c in m.tool_calls)
            out.append(ChatMessage("assistant", (m.text() + "\n" if m.text() else "") + calls))
        else:
            out.append(ChatMessage(m.role, m.text()))
    if plan is not None and not tokenizer.renders_tools:
        system = tools_system_prompt(plan)
        if out and out[0].role == "system":
            out[0] = ChatMessage("system", f"{out[0].content}\n\n{system}")
        else:
            out.insert(0, ChatMessage("system", system))
    return out


def tools_system_prompt(plan: ToolPlan) -> str:
    listed = "\n".join(json.dumps(t.model_dump(exclude_none=True, by_alias=True)) for t in plan.tools)
    how = ("Answer with one function call and nothing else, as JSON: "
           '{"name": <function-name>, "arguments": <args-json-object>}' if plan.forced else
           "You may call one of these functions. To call one, return a JSON object with the function name and "
           "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
           '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')
    return f"You have these functions, described as JSON inside <tools></tools> XML tags:\n<tools>\n{listed}\n" \
           f"</tools>\n{how}"


def parse_calls(text: str, plan: ToolPlan) -> tuple[str | None, list[dict]]:
    """(content, tool_calls as OpenAI returns them) of a finished output. A forced output is the call's JSON
    itself; an "auto" output holds calls in `<tool_call>` tags (a call that does not parse, or names no tool,
    stays in the content)."""
    names = {t.function.name for t in plan.tools}
    found = [text] if plan.forced else _CALL.findall(text)
    calls = []
    for raw in found:
        try:
            call = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if isinstance(call, dict) and call.get("name") in names and isinstance(call.get("arguments", {}), dict):
            calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                          "function": {"name": call["name"], "arguments": json.dumps(call.get("arguments", {}))}})
    if not calls:
        return text, []
    content = "" if plan.forced else _CALL.sub("", text).strip()
    return content or None, calls
