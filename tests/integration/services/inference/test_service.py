"""InferenceService over gRPC, in-process on port 0, with a fake Triton client."""

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from prometheus_client import REGISTRY

from llmesh.common.v1 import common_pb2
from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from mesh import semconv
from mesh.channel import build_channel
from mesh.errors import error_info
from mesh.server import start_service
from services.inference.service import InferenceService
from services.inference.settings import InferenceSettings
from services.inference.triton_client import Chunk, TritonError
from support.fake_triton import FakeTriton

SMALL, LARGE = "llmesh-small", "smollm2-135m-instruct"
# The fake Triton serves the chat models only.
SETTINGS = InferenceSettings(default_deadline_s=5.0, embedding_models=[])
ANSWER = [
    Chunk(0, [11, 12], [-0.5, -0.25], prompt_tokens=4, completion_tokens=2),
    Chunk(0, [13], [-1.0], prompt_tokens=4, completion_tokens=3),
    Chunk(0, [14], [-0.5], finish_reason="stop", prompt_tokens=4, completion_tokens=4),
]


@pytest.fixture
async def triton():
    # Every catalog model is loaded (readiness needs all); the tests call SMALL and LARGE.
    return FakeTriton({SMALL: ANSWER, LARGE: ANSWER, "smollm2-student": ANSWER})


@pytest.fixture
async def channel(triton):
    running = await start_service(InferenceService(SETTINGS, triton), SETTINGS, "127.0.0.1:0")
    channel = build_channel(f"127.0.0.1:{running.port}", SETTINGS)
    yield channel
    await channel.close()
    await running.stop(None)


@pytest.fixture
def stub(channel):
    return inference_pb2_grpc.InferenceServiceStub(channel)


def request(model=LARGE, fallbacks=(SMALL,)):
    return inference_pb2.GenerateRequest(
        model=model,
        fallback_models=fallbacks,
        prompts=[common_pb2.ModelPrompt(model=name, token_ids=[1, 2, 3, 4]) for name in (SMALL, LARGE)],
        sampling=common_pb2.SamplingParams(max_tokens=8),
    )


async def test_generate(stub):
    response = await stub.Generate(request())
    assert response.model == LARGE
    (choice,) = response.choices
    assert list(choice.token_ids) == [11, 12, 13, 14]
    assert list(choice.token_logprobs) == [-0.5, -0.25, -1.0, -0.5]
    assert choice.finish_reason == common_pb2.FINISH_REASON_STOP
    assert response.usage == common_pb2.Usage(prompt_tokens=4, completion_tokens=4, total_tokens=8)


async def test_generate_stream_sends_chunks_then_usage(stub):
    responses = [r async for r in stub.GenerateStream(request())]
    assert [list(r.delta.token_ids) for r in responses] == [[11, 12], [13], [14]]
    assert {r.model for r in responses} == {LARGE}
    *head, last = responses
    assert all(not r.HasField("usage") and r.delta.finish_reason == common_pb2.FINISH_REASON_UNSPECIFIED for r in head)
    assert last.delta.finish_reason == common_pb2.FINISH_REASON_STOP
    assert last.usage == common_pb2.Usage(prompt_tokens=4, completion_tokens=4, total_tokens=8)


async def test_unknown_model_is_not_found(stub, triton):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Generate(request(model="gpt-9"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(raised.value)
    assert (info.reason, info.metadata["model"]) == ("MODEL_NOT_FOUND", "gpt-9")
    assert triton.calls == []


async def test_fails_over_to_backup_when_primary_raises(stub, triton, spans):
    spans.clear()
    triton.scripts[LARGE] = [TritonError("CUDA out of memory")]
    responses = [r async for r in stub.GenerateStream(request())]
    assert {r.model for r in responses} == {SMALL}
    assert [list(r.delta.token_ids) for r in responses] == [[11, 12], [13], [14]]
    assert [model for model, _, _ in triton.calls] == [LARGE, SMALL]
    (server_span,) = [s for s in spans.get_finished_spans() if s.kind is trace.SpanKind.SERVER]
    assert server_span.attributes[semconv.LLMESH_FAILOVER_FROM] == LARGE
    assert server_span.attributes[semconv.GEN_AI_RESPONSE_MODEL] == SMALL


async def test_no_failover_after_the_first_streamed_token(stub, triton):
    triton.scripts[LARGE] = [ANSWER[0], TritonError("connection reset")]
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for response in stub.GenerateStream(request()):
            received.append(list(response.delta.token_ids))
    assert received == [[11, 12]]
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(raised.value).reason == "STREAM_INTERRUPTED"
    assert [model for model, _, _ in triton.calls] == [LARGE]


async def test_every_model_down_is_unavailable_with_details(stub, triton):
    triton.scripts = {LARGE: [TritonError("oom")], SMALL: [TritonError("not ready")]}
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Generate(request())
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(raised.value)
    assert info.reason == "MODELS_UNAVAILABLE"
    assert dict(info.metadata) == {LARGE: "oom", SMALL: "not ready"}


async def test_health_follows_model_readiness(channel, triton):
    health = health_pb2_grpc.HealthStub(channel)
    service = InferenceService.service_names[0]

    async def status(name: str = service) -> int:
        return (await health.Check(health_pb2.HealthCheckRequest(service=name))).status

    await asyncio.sleep(0.05)  # the first readiness check runs as the server starts
    assert await status() == health_pb2.HealthCheckResponse.SERVING

    # One model unloaded from Triton: its own entry and gauge say so, the service keeps serving
    # the others (NOT_SERVING here would take every replica out of a k8s Service at once).
    unloaded = triton.scripts.pop(SMALL)
    for _ in range(60):  # the check runs every 2 s
        if await status(f"{service}/{SMALL}") == health_pb2.HealthCheckResponse.NOT_SERVING:
            break
        await asyncio.sleep(0.05)
    assert await status(f"{service}/{SMALL}") == health_pb2.HealthCheckResponse.NOT_SERVING
    assert await status() == await status("") == health_pb2.HealthCheckResponse.SERVING
    assert REGISTRY.get_sample_value(semconv.METRIC_INFERENCE_MODEL_READY, {"model": SMALL}) == 0
    assert REGISTRY.get_sample_value(semconv.METRIC_INFERENCE_MODEL_READY, {"model": LARGE}) == 1

    # No model left: not serving; loaded again: serving.
    scripts = dict(triton.scripts)
    triton.scripts.clear()
    for _ in range(60):
        if await status() == health_pb2.HealthCheckResponse.NOT_SERVING:
            break
        await asyncio.sleep(0.05)
    assert await status() == health_pb2.HealthCheckResponse.NOT_SERVING
    triton.scripts.update(scripts, **{SMALL: unloaded})
    for _ in range(40):  # checked every 0.5 s while not ready
        if await status() == health_pb2.HealthCheckResponse.SERVING:
            break
        await asyncio.sleep(0.05)
    assert await status() == health_pb2.HealthCheckResponse.SERVING
