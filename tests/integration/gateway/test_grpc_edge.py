"""Gateway gRPC edge (GatewayService) over in-process fake upstreams."""

import asyncio
import logging

import grpc
import pytest

from gateway.grpc_edge import GatewayService
from gateway.pipeline import Pipeline
from llmesh.common.v1 import common_pb2
from llmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from mesh.channel import build_channel
from mesh.errors import error_info
from mesh.server import start_service
from support.fake_upstreams import (
    BLOCKED_WORD,
    FAIL_MID_STREAM,
    ROUTE_REASON,
    ROUTED_MODEL,
    SLOW_STREAM,
    gateway_settings,
    reply_for,
    unused_addr,
)
from support.settle import settle_after_cancel


def _messages(content: str = "hi") -> list[common_pb2.ChatMessage]:
    return [common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=content)]


async def _edge(settings, port_out=None):
    """The gateway's gRPC edge on a free port and a stub for it; returns (stub, stop)."""
    service = GatewayService(settings, Pipeline(settings))
    running = await start_service(service, settings, "127.0.0.1:0")
    channel = build_channel(f"127.0.0.1:{running.port}", settings)
    if port_out is not None:
        port_out.append(running.port)

    async def stop():
        await channel.close()
        await running.stop(None)
        await service.close()

    return gateway_pb2_grpc.GatewayServiceStub(channel), stop


@pytest.fixture(scope="module")
async def stub(upstreams):
    stub, stop = await _edge(gateway_settings(upstreams[1]))
    yield stub
    await stop()


async def test_chat(stub, upstreams):
    fakes, _ = upstreams
    response = await stub.Chat(gateway_pb2.ChatRequest(messages=_messages(), user="bob"))
    assert response.id.startswith("chatcmpl-")
    assert (response.model, response.text) == (ROUTED_MODEL, reply_for(ROUTED_MODEL))
    assert response.route_reason == ROUTE_REASON
    assert response.finish_reason == common_pb2.FINISH_REASON_STOP
    assert response.usage.completion_tokens == len(reply_for(ROUTED_MODEL))
    assert not response.verdict.blocked
    context = fakes.requests["inference"][-1].context
    assert (context.request_id, context.tenant_id, context.user_id) == (response.id, "default", "bob")


async def test_chat_stream(stub):
    request = gateway_pb2.ChatStreamRequest(model="smollm2-135m-instruct", messages=_messages())
    responses = [response async for response in stub.ChatStream(request)]
    assert len(responses) > 2
    assert "".join(response.text_delta for response in responses) == reply_for("smollm2-135m-instruct")
    assert {(response.id, response.model, response.route_reason) for response in responses} == {
        (responses[0].id, "smollm2-135m-instruct", ROUTE_REASON)
    }
    assert [response.finish_reason for response in responses[:-1]] == [0] * (len(responses) - 1)
    assert responses[-1].finish_reason == common_pb2.FINISH_REASON_STOP
    assert responses[-1].usage.completion_tokens == len(reply_for("smollm2-135m-instruct"))


async def test_blocked_prompt(stub):
    response = await stub.Chat(gateway_pb2.ChatRequest(messages=_messages(BLOCKED_WORD)))
    assert response.finish_reason == common_pb2.FINISH_REASON_CONTENT_FILTER
    assert response.verdict.blocked and response.verdict.category == common_pb2.SAFETY_CATEGORY_SENSITIVE_WORD
    responses = [r async for r in stub.ChatStream(gateway_pb2.ChatStreamRequest(messages=_messages(BLOCKED_WORD)))]
    assert len(responses) == 1 and responses[0].verdict.blocked
    assert responses[0].finish_reason == common_pb2.FINISH_REASON_CONTENT_FILTER


async def _failure(call) -> tuple[grpc.StatusCode, str, dict]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    info = error_info(raised.value)
    assert info is not None
    return raised.value.code(), info.reason, dict(info.metadata)


async def test_unknown_model_is_not_found(stub):
    code, reason, metadata = await _failure(stub.Chat(gateway_pb2.ChatRequest(model="gpt-4o", messages=_messages())))
    assert (code, reason, metadata["model"]) == (grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND", "gpt-4o")


async def test_bad_requests_are_invalid_argument(stub):
    bad_temperature = gateway_pb2.ChatRequest(messages=_messages(), sampling=common_pb2.SamplingParams(temperature=3))
    code, reason, metadata = await _failure(stub.Chat(bad_temperature))
    assert (code, reason, metadata["param"]) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "temperature")
    code, _, metadata = await _failure(stub.Chat(gateway_pb2.ChatRequest()))
    assert (code, metadata["param"]) == (grpc.StatusCode.INVALID_ARGUMENT, "messages")


async def _drain(call):
    async for _ in call:
        pass


async def test_mid_stream_failure_ends_the_stream_with_its_status(stub):
    call = stub.ChatStream(gateway_pb2.ChatStreamRequest(messages=_messages(FAIL_MID_STREAM)))
    code, reason, metadata = await _failure(_drain(call))
    assert (code, reason, metadata["service"]) == (grpc.StatusCode.INTERNAL, "MODEL_FAILED", "inference")


async def test_upstream_down_is_unavailable(upstreams):
    stub, stop = await _edge(gateway_settings(upstreams[1], router_addr=unused_addr()))
    try:
        code, reason, metadata = await _failure(stub.Chat(gateway_pb2.ChatRequest(messages=_messages())))
        assert (code, reason, metadata["service"]) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", "router")
        code, _, _ = await _failure(_drain(stub.ChatStream(gateway_pb2.ChatStreamRequest(messages=_messages()))))
        assert code == grpc.StatusCode.UNAVAILABLE
    finally:
        await stop()


def _raw_call(port: int, method: str, streaming: bool):
    """A call that sends bytes as they are, as a client in another language might."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    path = f"/llmesh.gateway.v1.GatewayService/{method}"
    if streaming:
        return channel, channel.unary_stream(path, request_serializer=None, response_deserializer=None)
    return channel, channel.unary_unary(path, request_serializer=None, response_deserializer=None)


def _invalid_utf8_request() -> bytes:
    # protobuf strings must be UTF-8; b"\xed\xa0\x80" is a UTF-8-encoded lone surrogate.
    valid = gateway_pb2.ChatRequest(messages=_messages("ABC")).SerializeToString()
    return valid.replace(b"ABC", b"\xed\xa0\x80")


@pytest.fixture(scope="module")
async def edge_port(upstreams):
    ports: list[int] = []
    _, stop = await _edge(gateway_settings(upstreams[1]), ports)
    yield ports[0]
    await stop()


@pytest.mark.parametrize("method", ["Chat", "ChatStream"])
@pytest.mark.parametrize("payload", [_invalid_utf8_request(), b"\x0a\x05\x08"], ids=["lone-surrogate", "truncated"])
async def test_undecodable_requests_are_invalid_argument_without_a_traceback(edge_port, caplog, method, payload):
    caplog.set_level(logging.INFO)
    channel, call = _raw_call(edge_port, method, streaming=method == "ChatStream")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            if method == "ChatStream":
                async for _ in call(payload, timeout=5):
                    pass
            else:
                await call(payload, timeout=5)
    finally:
        await channel.close()
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(raised.value).reason == "MALFORMED_REQUEST"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_client_closing_a_stream_early_leaves_no_error(stub, caplog):
    caplog.set_level(logging.INFO)
    call = stub.ChatStream(gateway_pb2.ChatStreamRequest(messages=_messages(SLOW_STREAM)))
    first = await call.read()
    assert first.text_delta or first.id
    call.cancel()
    await settle_after_cancel()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_client_abandoning_a_unary_call_leaves_no_error(stub, caplog):
    caplog.set_level(logging.INFO)
    call = stub.Chat(gateway_pb2.ChatRequest(messages=_messages(SLOW_STREAM)))
    await asyncio.sleep(0.3)
    call.cancel()
    await settle_after_cancel()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
