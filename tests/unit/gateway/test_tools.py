"""Tool calling's plan: the answer's schema per tool_choice, the tools' system text, earlier
calls spelled out, and answers read back as text or calls."""

import json

import jsonschema
import pytest

from gateway import tools
from gateway.errors import InvalidRequest
from llmesh.common.v1 import common_pb2

PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = common_pb2.Tool(name="weather", description="Weather", parameters_json=json.dumps(PARAMS))
TIME = common_pb2.Tool(name="time", description="Time")


def _choice(mode, name=""):
    return common_pb2.ToolChoice(mode=mode, function_name=name)


def test_required_allows_exactly_a_call_of_some_tool():
    plan = tools.plan([WEATHER, TIME], _choice(tools.REQUIRED))
    jsonschema.validate({"name": "weather", "arguments": {"city": "Rome"}}, plan.schema)
    jsonschema.validate({"name": "time", "arguments": {}}, plan.schema)
    for wrong in ({"name": "weather", "arguments": {}}, {"name": "other", "arguments": {}}, {"content": "hi"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, plan.schema)


def test_auto_allows_text_or_a_call_and_a_named_function_only_that_one():
    auto = tools.plan([WEATHER], _choice(tools.AUTO))
    jsonschema.validate({"content": "It is sunny."}, auto.schema)
    jsonschema.validate({"name": "weather", "arguments": {"city": "Rome"}}, auto.schema)
    named = tools.plan([WEATHER, TIME], _choice(tools.FUNCTION, "time"))
    jsonschema.validate({"name": "time", "arguments": {}}, named.schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "weather", "arguments": {"city": "Rome"}}, named.schema)


@pytest.mark.parametrize(
    ("tool_list", "choice", "param"),
    [
        ([WEATHER], _choice(tools.FUNCTION, "nope"), "tool_choice"),
        ([], _choice(tools.REQUIRED), "tool_choice"),
        ([WEATHER, WEATHER], _choice(tools.AUTO), "tools"),
        ([common_pb2.Tool(name="bad", parameters_json='{"type": "nonsense"}')], _choice(tools.AUTO), "tools"),
    ],
)
def test_what_cannot_be_served_is_refused_by_name(tool_list, choice, param):
    with pytest.raises(InvalidRequest) as raised:
        tools.plan(tool_list, choice)
    assert raised.value.param == param


def test_the_conversation_describes_the_tools_and_spells_out_earlier_calls():
    plan = tools.plan([WEATHER], _choice(tools.AUTO))
    call = common_pb2.ToolCall(id="call_1", name="weather", arguments='{"city": "Rome"}')
    messages = [
        common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="Weather in Rome?"),
        common_pb2.ChatMessage(role=common_pb2.ROLE_ASSISTANT, tool_calls=[call]),
        common_pb2.ChatMessage(role=common_pb2.ROLE_TOOL, content="sunny", tool_call_id="call_1"),
    ]
    rendered = tools.with_tools(messages, plan)
    assert rendered[0].role == common_pb2.ROLE_SYSTEM and '"weather"' in rendered[0].content
    assert json.loads(rendered[2].content) == {"name": "weather", "arguments": {"city": "Rome"}}
    assert rendered[3].content == "sunny"
    assert tools.with_tools(messages, tools.plan([WEATHER], _choice(tools.NONE)))[0].role == common_pb2.ROLE_USER


def test_answers_are_read_as_calls_or_text():
    plan = tools.plan([WEATHER], _choice(tools.AUTO))
    content, calls = tools.read_answer(plan, '{"name": "weather", "arguments": {"city": "Rome"}}')
    assert content == "" and calls[0].name == "weather" and json.loads(calls[0].arguments) == {"city": "Rome"}
    assert calls[0].id.startswith("call_")
    assert tools.read_answer(plan, '{"content": "Sunny."}') == ("Sunny.", [])
    # Cut short by max_tokens: the text as far as it got.
    assert tools.read_answer(plan, '{"content": "Sunny and wa') == ("Sunny and wa", [])
    # Arguments that no longer validate (redaction changed them) are no call.
    assert tools.read_answer(plan, '{"name": "weather", "arguments": {}}')[1] == []
