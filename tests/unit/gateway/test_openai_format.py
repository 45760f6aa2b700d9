"""Gateway: OpenAI request validation, error mapping and SSE formatting, without any server."""

import json

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from pydantic import ValidationError

from gateway.errors import (
    InvalidRequest,
    ModelNotFound,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    from_rpc_error,
)
from gateway.openai_format import ChatFormat, CompletionFormat, sse_events
from gateway.openai_schema import ChatCompletionRequest, CompletionRequest, describe_validation_error
from gateway.records import ChatStream, StreamChunk
from llmesh.common.v1 import common_pb2

USER = {"role": "user", "content": "hi"}


def _problem(model, body: dict) -> tuple[str, str | None]:
    with pytest.raises(ValidationError) as raised:
        model.model_validate(body)
    return describe_validation_error(raised.value.errors())


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"messages": [USER], "temperature": 2.5}, "temperature", "less than or equal to 2"),
        ({"messages": [USER], "temperature": -0.1}, "temperature", "greater than or equal to 0"),
        ({"messages": [USER], "top_p": 1.5}, "top_p", "less than or equal to 1"),
        ({"messages": [USER], "n": 9}, "n", "less than or equal to 8"),
        ({"messages": [USER], "store": True}, "store", "not supported"),
        ({"messages": [USER], "top_logprobs": 21, "logprobs": True}, "top_logprobs", "less than or equal to 20"),
        ({"messages": [USER], "logit_bias": {"x": 1}}, "logit_bias", "token ids"),
        ({"messages": [USER], "logit_bias": {"5": 101}}, "logit_bias", "between -100 and 100"),
        ({"messages": [USER], "frequency_penalty": 2.5}, "frequency_penalty", "less than or equal to 2"),
        ({"messages": [USER], "response_format": {"type": "json_schema"}}, "response_format", "needs a json_schema"),
        ({"messages": [USER], "tool_choice": "sometimes"}, "tool_choice", "'none'"),
        ({"messages": [{"role": "user", "content": "hi", "audio": {}}]}, "messages[0].audio", "not supported"),
        ({"messages": [USER], "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"messages": [USER], "max_completion_tokens": 0}, "max_completion_tokens", "greater than"),
        ({"messages": [USER], "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
        ({"messages": [USER], "stream_options": {"include_usage": "maybe"}}, "stream_options.include_usage", "boolean"),
        ({"messages": []}, "messages", "at least 1"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role", "'system'"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages[0].content",
            "only text content parts",
        ),
    ],
)
def test_bad_chat_parameters_name_the_param(body, param, fragment):
    message, reported = _problem(ChatCompletionRequest, body)
    assert reported == param
    assert fragment in message and f"'{param}'" in message


def test_missing_messages_is_a_missing_parameter():
    assert _problem(ChatCompletionRequest, {"model": "auto"}) == ("Missing required parameter: 'messages'.", "messages")


def test_malformed_json_has_no_param():
    errors = [
        {"type": "json_invalid", "loc": ("body", 1), "msg": "JSON decode error", "ctx": {"error": "Expecting value"}}
    ]
    message, param = describe_validation_error(errors)
    assert param is None and "could not parse the JSON body" in message


def test_chat_request_translates_to_pipeline_input():
    request = ChatCompletionRequest.model_validate(
        {
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            ],
            "max_completion_tokens": 7,
            "stop": "END",
            "seed": 3,
            "user": "alice",
        }
    )
    chat = request.to_input()
    assert [m.role for m in chat.messages] == [common_pb2.ROLE_SYSTEM, common_pb2.ROLE_USER]
    assert chat.messages[1].content == "a\nb"
    assert chat.model == "auto" and chat.user == "alice" and chat.prompt is None
    assert chat.sampling.max_tokens == 7 and list(chat.sampling.stop) == ["END"] and chat.sampling.seed == 3
    # Unset means "the model's default", which must stay distinguishable from 0 (greedy).
    assert not chat.sampling.HasField("temperature") and not chat.sampling.HasField("top_p")


def test_null_means_not_set():
    request = ChatCompletionRequest.model_validate(
        {"messages": [USER], "n": None, "stream": None, "stop": None, "temperature": None, "max_tokens": None}
    )
    assert not request.stream and request.to_input().sampling == common_pb2.SamplingParams()


def test_completion_prompt_may_be_a_list_of_one():
    assert CompletionRequest.model_validate({"prompt": ["once"]}).to_input().prompt == "once"
    message, param = _problem(CompletionRequest, {"prompt": ["a", "b"]})
    assert param == "prompt" and "exactly one prompt" in message


def _rpc_error(code: grpc.StatusCode, details: str, reason: str | None = None, **metadata: str):
    trailing = ()
    if reason is not None:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="llmesh.dev", metadata=metadata))
        status = status_pb2.Status(code=code.value[0], message=details, details=[detail])
        trailing = (("grpc-status-details-bin", status.SerializeToString()),)
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details)


@pytest.mark.parametrize(
    ("code", "cls", "http_status"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidRequest, 400),
        (grpc.StatusCode.NOT_FOUND, ModelNotFound, 404),
        (grpc.StatusCode.UNAVAILABLE, UpstreamUnavailable, 503),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, UpstreamUnavailable, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, UpstreamTimeout, 504),
        (grpc.StatusCode.INTERNAL, UpstreamError, 502),
        (grpc.StatusCode.UNKNOWN, UpstreamError, 502),
    ],
)
def test_rpc_errors_map_by_status_code(code, cls, http_status):
    error = from_rpc_error(_rpc_error(code, "details"), "router")
    assert type(error) is cls and error.http_status == http_status
    assert error.metadata["service"] == "router"


def test_error_info_reason_and_metadata_travel_on():
    error = from_rpc_error(
        _rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "prompt too long", "PROMPT_TOO_LONG", param="messages"),
        "preprocess",
    )
    assert (error.message, error.reason, error.code, error.param) == (
        "prompt too long",
        "PROMPT_TOO_LONG",
        "prompt_too_long",
        "messages",
    )
    missing = from_rpc_error(
        _rpc_error(grpc.StatusCode.NOT_FOUND, "no such model: x", "MODEL_NOT_FOUND", model="x"), "router"
    )
    assert missing.code == "model_not_found" and missing.param == "model" and missing.metadata["model"] == "x"


def test_upstream_failures_do_not_leak_details():
    error = from_rpc_error(
        _rpc_error(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; 10.0.0.7:50053"), "inference"
    )
    assert "10.0.0.7" not in error.message and "inference" in error.message
    assert "10.0.0.7" in error.upstream_message  # kept for the logs
    assert error.code == "upstream_unavailable"


def _stream(*chunks: StreamChunk, fail: Exception | None = None) -> ChatStream:
    async def generate():
        for chunk in chunks:
            yield chunk
        if fail is not None:
            raise fail

    return ChatStream("chatcmpl-1", 1700000000, "llmesh-small", "reason", generate(), close=lambda: None)


async def _events(stream: ChatStream, fmt, include_usage: bool) -> list:
    events = [event async for event in sse_events(stream, fmt, include_usage)]
    assert all(event.startswith("data: ") and event.endswith("\n\n") for event in events)
    payloads = [event[len("data: ") : -2] for event in events]
    return [payload if payload == "[DONE]" else json.loads(payload) for payload in payloads]


USAGE = common_pb2.Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)


async def test_chat_sse_sequence_with_usage():
    events = await _events(
        _stream(
            StreamChunk("Hel"),
            StreamChunk(""),  # text held back by postprocess: no event
            StreamChunk("lo", common_pb2.FINISH_REASON_STOP, USAGE),
        ),
        ChatFormat(),
        include_usage=True,
    )
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert {c["id"] for c in chunks} == {"chatcmpl-1"}
    assert [c["choices"][0]["delta"] if c["choices"] else None for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo"},
        {},
        None,
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None, None, None, "stop"]
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


async def test_completion_sse_without_usage():
    events = await _events(
        _stream(StreamChunk("a"), StreamChunk(finish_reason=common_pb2.FINISH_REASON_LENGTH, usage=USAGE)),
        CompletionFormat(),
        include_usage=False,
    )
    assert events[-1] == "[DONE]"
    assert [c["object"] for c in events[:-1]] == ["text_completion"] * 2
    assert [(c["choices"][0]["text"], c["choices"][0]["finish_reason"]) for c in events[:-1]] == [
        ("a", None),
        ("", "length"),
    ]


async def test_refusal_is_in_the_final_chunk():
    verdict = common_pb2.SafetyVerdict(blocked=True, message="no")
    events = await _events(
        _stream(StreamChunk(finish_reason=common_pb2.FINISH_REASON_CONTENT_FILTER, verdict=verdict)),
        ChatFormat(),
        False,
    )
    assert events[-2]["choices"][0] == {
        "index": 0,
        "delta": {"refusal": "no"},
        "logprobs": None,
        "finish_reason": "content_filter",
    }


async def test_mid_stream_error_is_an_error_event_and_no_done():
    events = await _events(
        _stream(StreamChunk("a"), fail=UpstreamUnavailable("The inference service is unavailable; please retry.")),
        ChatFormat(),
        include_usage=True,
    )
    assert "[DONE]" not in events
    assert events[-1] == {
        "error": {
            "message": "The inference service is unavailable; please retry.",
            "type": "server_error",
            "param": None,
            "code": "upstream_unavailable",
        }
    }
