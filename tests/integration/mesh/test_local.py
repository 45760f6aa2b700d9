"""Co-location (mesh.local): a service hosted in the caller's process answers its in-process
callers as it answers over gRPC, status codes, details, deadlines and cancellation included,
and still serves its address for everyone else."""

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmesh.common.v1 import common_pb2
from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from mesh import deadlines, shedding
from mesh.channel import build_channel
from mesh.errors import error_info
from mesh.local import HostedService, LocalChannel
from mesh.settings import MeshSettings
from support.fake_upstreams import FAIL_GENERATE, SLOW_STREAM, FakeUpstreams


def _request(text: str = "hi", model: str = "llmesh-small") -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        model=model, prompts=[common_pb2.ModelPrompt(model=model, token_ids=list(text.encode()))]
    )


class RecordingUpstreams(FakeUpstreams):
    """Fakes that also keep what each generation saw of its call: metadata, deadline, priority."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict] = []

    async def Generate(self, request, context):
        self.seen.append(
            {
                "metadata": dict(context.invocation_metadata() or ()),
                "remaining_s": deadlines.remaining_s(),
                "priority": shedding.current_priority(),
            }
        )
        return await super().Generate(request, context)


@pytest.fixture
async def hosted():
    fakes = RecordingUpstreams()
    service = await HostedService.start(fakes, MeshSettings(), "127.0.0.1:0")
    yield fakes, service
    await service.drain(0)
    await service.close()


def _stubs(service: HostedService, **settings):
    """(in process, over gRPC) stubs to the same hosted service."""
    local = build_channel(service.addr, MeshSettings(**settings))
    assert isinstance(local, LocalChannel)
    network = build_channel(f"localhost:{service.running.port}", MeshSettings(**settings))
    assert not isinstance(network, LocalChannel)
    return inference_pb2_grpc.InferenceServiceStub(local), inference_pb2_grpc.InferenceServiceStub(network)


async def test_a_local_call_answers_as_the_network_call_does(hosted):
    fakes, service = hosted
    local, network = _stubs(service)
    over_local, over_network = await local.Generate(_request()), await network.Generate(_request())
    assert over_local == over_network
    assert over_local.choices[0].token_ids
    assert len(fakes.requests["inference"]) == 2


async def test_an_abort_reaches_the_caller_with_its_code_details_and_error_info(hosted):
    _, service = hosted
    failures = []
    for stub in _stubs(service):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Generate(_request(FAIL_GENERATE))
        failures.append(caught.value)
    local, network = failures
    assert local.code() == network.code() == grpc.StatusCode.INTERNAL
    assert local.details() == network.details() == "the model crashed"
    assert error_info(local) == error_info(network)
    assert error_info(local).reason == "MODEL_FAILED"


async def test_a_local_call_past_its_deadline_is_deadline_exceeded(hosted):
    fakes, service = hosted
    fakes.generate_delay_s = 1.0
    local, _ = _stubs(service)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await local.Generate(_request(), timeout=0.1)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_the_service_sees_the_deadline_and_metadata_and_the_caller_keeps_its_own(hosted):
    fakes, service = hosted
    local, _ = _stubs(service, default_deadline_s=7.0)

    async def as_a_batch_caller() -> None:
        # In a task of its own: the priority stays in that task's context.
        shedding.set_priority(shedding.BATCH)
        await local.Generate(_request(), metadata=(("x-test", "1"),))

    await asyncio.create_task(as_a_batch_caller())
    seen = fakes.seen[-1]
    # The client interceptors set the call's details as on a network channel.
    assert seen["metadata"]["x-test"] == "1"
    assert seen["metadata"][shedding.PRIORITY_HEADER] == shedding.BATCH
    assert seen["priority"] == shedding.BATCH
    assert 6.0 < seen["remaining_s"] <= 7.0
    # What the service set in its context variables stays in its call's task.
    assert deadlines.remaining_s() is None


async def test_a_stream_streams_and_cancelling_it_cancels_the_service(hosted):
    fakes, service = hosted
    local, network = _stubs(service)
    over_local = [chunk async for chunk in local.GenerateStream(_request())]
    over_network = [chunk async for chunk in network.GenerateStream(_request())]
    assert over_local == over_network and len(over_local) > 1

    call = local.GenerateStream(_request(f"{SLOW_STREAM} please"))
    chunks = aiter(call)
    await anext(chunks)
    call.cancel()
    for _ in range(50):
        if fakes.cancelled_streams:
            break
        await asyncio.sleep(0.02)
    assert fakes.cancelled_streams == 1


async def test_a_caller_that_stops_reading_a_stream_cancels_the_service(hosted):
    fakes, service = hosted
    local, _ = _stubs(service)
    chunks = aiter(local.GenerateStream(_request(f"{SLOW_STREAM} please")))
    await anext(chunks)
    await chunks.aclose()
    for _ in range(50):
        if fakes.cancelled_streams:
            break
        await asyncio.sleep(0.02)
    assert fakes.cancelled_streams == 1


async def test_health_in_process_follows_the_service_and_its_drain(hosted):
    _, service = hosted
    health = health_pb2_grpc.HealthStub(build_channel(service.addr, MeshSettings()))
    for _ in range(50):
        answer = await health.Check(health_pb2.HealthCheckRequest())
        if answer.status == health_pb2.HealthCheckResponse.SERVING:
            break
        await asyncio.sleep(0.05)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    await service.drain(0)
    answer = await health.Check(health_pb2.HealthCheckRequest())
    assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_an_unknown_method_is_unimplemented(hosted):
    _, service = hosted
    channel = build_channel(service.addr, MeshSettings())
    unknown = channel.unary_unary(
        "/llmesh.inference.v1.InferenceService/NoSuchMethod",
        request_serializer=inference_pb2.GenerateRequest.SerializeToString,
        response_deserializer=inference_pb2.GenerateResponse.FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await unknown(_request())
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
