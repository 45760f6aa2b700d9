"""Tool calling on top of guided decoding, the same for every edge.

The model is told about the tools in a system message (rendered with its own chat template
like any other message, and checked by the input guard like any other text), and its answer is
constrained by a JSON schema built from the tools, so even a small model writes a valid call:

- ``required``: the answer is ``{"name": <one of the tools>, "arguments": <that tool's
  parameters>}``;
- a named function: the same with only that tool;
- ``auto``: the answer is either such a call or ``{"content": "<text>"}``: the model chooses
  by the first key it writes, and the gateway reads which it chose;
- ``none``: the tools are not described and the answer is free text.

One answer makes at most one call. The answer passes through postprocess (output moderation,
PII redaction) before it is parsed, so the guardrails apply to tool arguments too. Earlier calls
and tool results in the conversation are rendered as the text of their messages: an assistant
call as the JSON the model would have written, a tool result as the tool message's content.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import jsonschema

from gateway.errors import InvalidRequest
from llmesh.common.v1 import common_pb2

AUTO = common_pb2.TOOL_CHOICE_MODE_AUTO
NONE = common_pb2.TOOL_CHOICE_MODE_NONE
REQUIRED = common_pb2.TOOL_CHOICE_MODE_REQUIRED
FUNCTION = common_pb2.TOOL_CHOICE_MODE_FUNCTION

_ANY_OBJECT = {"type": "object"}


@dataclass(frozen=True)
class ToolPlan:
    """What tool calling changes in a request: an added system text and the answer's schema."""

    mode: int
    tools: Sequence[common_pb2.Tool]
    schema: dict

    @property
    def calls_possible(self) -> bool:
        return self.mode != NONE


def parameters(tool: common_pb2.Tool) -> dict:
    if not tool.parameters_json:
        return dict(_ANY_OBJECT)
    try:
        schema = json.loads(tool.parameters_json)
    except json.JSONDecodeError as error:
        raise InvalidRequest(f"The parameters of tool '{tool.name}' are not JSON: {error}.", param="tools") from None
    if not isinstance(schema, dict):
        raise InvalidRequest(f"The parameters of tool '{tool.name}' must be a JSON Schema object.", param="tools")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as error:
        raise InvalidRequest(
            f"The parameters of tool '{tool.name}' are not a valid JSON Schema: {error.message}.", param="tools"
        ) from None
    return schema


def _call_schema(tool: common_pb2.Tool) -> dict:
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": parameters(tool)},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def plan(tools: Sequence[common_pb2.Tool], choice: common_pb2.ToolChoice) -> ToolPlan | None:
    """The plan for a request's tools, or None without tools; refuses what cannot be served."""
    mode = choice.mode or AUTO
    if not tools:
        if choice.mode not in (common_pb2.TOOL_CHOICE_MODE_UNSPECIFIED, NONE):
            raise InvalidRequest("tool_choice needs tools.", param="tool_choice")
        return None
    names = [tool.name for tool in tools]
    if len(set(names)) != len(names):
        raise InvalidRequest("Tool names must be unique.", param="tools")
    if any(not name for name in names):
        raise InvalidRequest("Every tool needs a name.", param="tools")
    chosen = list(tools)
    if mode == FUNCTION:
        chosen = [tool for tool in tools if tool.name == choice.function_name]
        if not chosen:
            raise InvalidRequest(
                f"tool_choice names '{choice.function_name}', which is not among the tools.", param="tool_choice"
            )
    calls = [_call_schema(tool) for tool in chosen]
    call = calls[0] if len(calls) == 1 else {"anyOf": calls}
    if mode == AUTO:
        text = {
            "type": "object",
            "properties": {"content": {"type": "string"}},
            "required": ["content"],
            "additionalProperties": False,
        }
        schema = {"anyOf": [text, *calls]}
    else:
        schema = call
    return ToolPlan(mode, chosen, schema)


def system_text(plan: ToolPlan) -> str:
    """What the model is told about the tools and the form of its answer."""
    described = [
        {"name": tool.name, "description": tool.description, "parameters": parameters(tool)} for tool in plan.tools
    ]
    lines = ["You can call these tools:", json.dumps(described, ensure_ascii=False)]
    if plan.mode == AUTO:
        lines.append(
            'To call a tool, answer only with {"name": <tool name>, "arguments": <its arguments>}. '
            'To answer in text instead, answer only with {"content": <your answer>}.'
        )
    else:
        lines.append('Answer only with {"name": <tool name>, "arguments": <its arguments>}.')
    return "\n".join(lines)


def call_text(call: common_pb2.ToolCall) -> str:
    """An earlier call as the model would have written it."""
    try:
        arguments = json.loads(call.arguments) if call.arguments else {}
    except json.JSONDecodeError:
        arguments = call.arguments
    return json.dumps({"name": call.name, "arguments": arguments}, ensure_ascii=False)


def with_tools(messages: Sequence[common_pb2.ChatMessage], plan: ToolPlan | None) -> list[common_pb2.ChatMessage]:
    """The conversation as the model reads it: earlier calls spelled out, and the tools
    described in the system message (merged into the caller's own, or a new first one)."""
    rendered = []
    for message in messages:
        if message.tool_calls:
            text = "\n".join(call_text(call) for call in message.tool_calls)
            content = f"{message.content}\n{text}" if message.content else text
            rendered.append(common_pb2.ChatMessage(role=message.role, content=content, name=message.name))
        else:
            rendered.append(common_pb2.ChatMessage(role=message.role, content=message.content, name=message.name))
    if plan is None or not plan.calls_possible:
        return rendered
    tools = system_text(plan)
    if rendered and rendered[0].role == common_pb2.ROLE_SYSTEM:
        rendered[0].content = f"{rendered[0].content}\n\n{tools}" if rendered[0].content else tools
    else:
        rendered.insert(0, common_pb2.ChatMessage(role=common_pb2.ROLE_SYSTEM, content=tools))
    return rendered


_CONTENT_START = re.compile(r'^\s*\{\s*"content"\s*:\s*"')


def _cut_content(text: str) -> str | None:
    """The text of a ``{"content": "...`` answer cut short (max_tokens), as far as it got."""
    start = _CONTENT_START.match(text)
    if start is None:
        return None
    rest = text[start.end() :]
    # Drop what may be half an escape sequence at the end (at most "\uXXX").
    for cut in range(min(len(rest), 6) + 1):
        try:
            return json.loads(f'"{rest[: len(rest) - cut]}"')
        except json.JSONDecodeError:
            continue
    return None


def read_answer(plan: ToolPlan, text: str) -> tuple[str, list[common_pb2.ToolCall]]:
    """(content, calls) from an answer written under ``plan.schema``. An answer that does not
    parse was cut short by max_tokens: a text answer is returned as far as it got, anything
    else as the model wrote it."""
    try:
        answer = json.loads(text)
    except json.JSONDecodeError:
        cut = _cut_content(text) if plan.mode == AUTO else None
        return (text if cut is None else cut), []
    if not isinstance(answer, dict):
        return text, []
    if set(answer) == {"content"} and isinstance(answer["content"], str):
        return answer["content"], []
    tool = next((tool for tool in plan.tools if tool.name == answer.get("name")), None)
    if tool is None or "arguments" not in answer:
        return text, []
    try:
        jsonschema.validate(answer["arguments"], parameters(tool))
    except jsonschema.ValidationError:
        # Guided decoding keeps to the schema, but redaction may have changed a value.
        return text, []
    call = common_pb2.ToolCall(
        id=f"call_{uuid.uuid4().hex[:24]}",
        name=tool.name,
        arguments=json.dumps(answer["arguments"], ensure_ascii=False),
    )
    return "", [call]
