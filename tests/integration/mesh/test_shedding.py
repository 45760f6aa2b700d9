"""Load shedding on real gRPC servers and the REST edge: at capacity, RESOURCE_EXHAUSTED / 429
with Retry-After at once; batch calls give way to interactive ones; health still answers."""

import asyncio

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.pipeline import Pipeline
from gateway.rest import create_app
from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from mesh.channel import build_channel
from mesh.errors import error_info
from mesh.server import start_service
from mesh.settings import MeshSettings
from support.fake_upstreams import FakeUpstreams, gateway_settings

CHAT = "/v1/chat/completions"
BODY = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
GENERATE = inference_pb2.GenerateRequest(model="llmesh-small")


@pytest.fixture
async def slow_upstream():
    """Fake upstreams whose unary generation takes 0.5 s, one call at a time, one waiting."""
    fakes = FakeUpstreams()
    fakes.generate_delay_s = 0.5
    running = await start_service(fakes, MeshSettings(max_concurrent_requests=1, max_queued_requests=1), "127.0.0.1:0")
    yield f"127.0.0.1:{running.port}"
    await running.stop(None)


def _stub(addr: str, **settings) -> inference_pb2_grpc.InferenceServiceStub:
    return inference_pb2_grpc.InferenceServiceStub(build_channel(addr, MeshSettings(**settings)))


async def _outcome(call) -> str:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        info = error_info(error)
        assert info.reason == "OVERLOADED" and info.metadata["retry_after"] == "1"
        return f"refused:{info.metadata['priority']}"
    return "ok"


async def test_overflow_is_refused_with_resource_exhausted_and_health_answers(slow_upstream):
    stub = _stub(slow_upstream)
    calls = [asyncio.create_task(_outcome(stub.Generate(GENERATE))) for _ in range(3)]
    await asyncio.sleep(0.2)
    health = health_pb2_grpc.HealthStub(build_channel(slow_upstream, MeshSettings()))
    assert (
        await health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
    ).status == health_pb2.HealthCheckResponse.SERVING
    assert sorted(await asyncio.gather(*calls)) == ["ok", "ok", "refused:interactive"]


async def test_batch_calls_give_their_place_to_interactive_ones(slow_upstream):
    interactive, batch = _stub(slow_upstream), _stub(slow_upstream, request_priority="batch")
    running = asyncio.create_task(_outcome(interactive.Generate(GENERATE)))
    await asyncio.sleep(0.1)
    queued_batch = asyncio.create_task(_outcome(batch.Generate(GENERATE)))
    await asyncio.sleep(0.1)
    queued_interactive = asyncio.create_task(_outcome(interactive.Generate(GENERATE)))
    assert await asyncio.gather(running, queued_batch, queued_interactive) == ["ok", "refused:batch", "ok"]


async def _chats(settings, count: int) -> list[httpx.Response]:
    pipeline = Pipeline(settings)
    app = create_app(settings, pipeline)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw", timeout=10
        ) as client:
            return list(await asyncio.gather(*(client.post(CHAT, json=BODY) for _ in range(count))))
    finally:
        await app.state.guard.close()
        await app.state.batches.close()
        await pipeline.close()


def _assert_overloaded(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"] == "1"
    error = response.json()["error"]
    assert error["code"] == "overloaded" and error["type"] == "rate_limit_error" and "capacity" in error["message"]


async def test_rest_edge_at_capacity_answers_429_with_retry_after(slow_upstream):
    responses = await _chats(gateway_settings(slow_upstream, max_concurrent_requests=1, max_queued_requests=0), 2)
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200, 429]
    _assert_overloaded(next(r for r in responses if r.status_code == 429))


async def test_an_overloaded_service_reaches_the_rest_caller_as_429(slow_upstream):
    # The gateway has room; the upstream (one running, one waiting) refuses the third call.
    responses = await _chats(gateway_settings(slow_upstream), 3)
    assert sorted(response.status_code for response in responses) == [200, 200, 429]
    _assert_overloaded(next(r for r in responses if r.status_code == 429))
