"""The gateway while its Redis is away, with a real redis-server stopped, frozen and restarted:
a clear 503 (REST) or UNAVAILABLE (gRPC) with the reason, never a hang, rate limits failing
in the configured direction, and recovery without restarting the gateway."""

import asyncio
import os
import signal

import grpc
import httpx
import pytest

from gateway.grpc_edge import GatewayService
from gateway.pipeline import Pipeline
from gateway.rest import create_app
from llmesh.common.v1 import common_pb2
from llmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from mesh.errors import error_info
from mesh.server import start_service
from mesh.settings import MeshSettings
from support.fake_upstreams import FakeUpstreams, gateway_settings
from support.redis_server import RedisServer

CHAT = "/v1/chat/completions"
BODY = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
# Generous: the test asserts the gateway answers instead of hanging, not how fast it answers.
CLIENT_TIMEOUT_S = 15.0
# Recovery is by itself but not at once: a client whose command found Redis away asks again
# (one probe) LLMESH_REDIS_BREAKER_OPEN_S (1 s) later. Bounded: this many tries 0.1 s apart.
RECOVERY_TRIES = 50


async def answered_again(send):
    """The first answer that is not a 503, or the last 503 after RECOVERY_TRIES tries."""
    for _ in range(RECOVERY_TRIES):
        response = await send()
        if response.status_code != 503:
            return response
        await asyncio.sleep(0.1)
    return response


@pytest.fixture(scope="module")
async def upstream():
    running = await start_service(FakeUpstreams(), MeshSettings(), "127.0.0.1:0")
    yield f"127.0.0.1:{running.port}"
    await running.stop(None)


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    if server.process is not None:
        server.process.send_signal(signal.SIGCONT)
    server.stop()


def _settings(upstream, redis_server, **overrides):
    return gateway_settings(
        upstream,
        redis_url=redis_server.url,
        auth_required=True,
        rate_limits_enabled=True,
        audit_enabled=False,
        # Where charges left when a test's gateway closes during the outage are spooled.
        audit_dir=redis_server.directory.parent / "audit",
        redis_connect_timeout_s=0.3,
        redis_socket_timeout_s=0.3,
        **overrides,
    )


@pytest.fixture
async def gateway(upstream, own_redis, request):
    settings = _settings(upstream, own_redis, **getattr(request, "param", {}))
    pipeline = Pipeline(settings)
    app = create_app(settings, pipeline)
    key, _ = await app.state.guard.tenancy.create_key("acme")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=CLIENT_TIMEOUT_S) as client:
        client.headers["authorization"] = f"Bearer {key}"
        yield client, app
    await app.state.guard.close()
    await app.state.batches.close()
    await pipeline.close()


def _assert_redis_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "redis_unavailable" and error["type"] == "server_error"
    assert "unavailable" in error["message"]
    assert response.headers["retry-after"] == "1"


async def test_rate_limits_fail_closed_with_503_and_recover_by_themselves(gateway, own_redis):
    client, _ = gateway
    assert (await client.post(CHAT, json=BODY)).status_code == 200
    own_redis.stop()
    # The key was verified a moment ago, so authentication passes; the rate limiter cannot.
    _assert_redis_unavailable(await client.post(CHAT, json=BODY))
    own_redis.start()
    assert (await answered_again(lambda: client.post(CHAT, json=BODY))).status_code == 200


@pytest.mark.parametrize("gateway", [{"rate_limits_fail_open": True}], indirect=True)
async def test_rate_limits_fail_open_when_configured(gateway, own_redis):
    client, _ = gateway
    assert (await client.post(CHAT, json=BODY)).status_code == 200
    own_redis.stop()
    assert (await client.post(CHAT, json=BODY)).status_code == 200
    # A key never seen while Redis answered cannot be verified: 503, not 401.
    _assert_redis_unavailable(await client.post(CHAT, json=BODY, headers={"authorization": "Bearer llm_x_y"}))


@pytest.mark.parametrize("gateway", [{"rate_limits_fail_open": True}], indirect=True)
async def test_a_frozen_redis_is_answered_with_503_not_a_hang(gateway, own_redis):
    client, app = gateway
    assert (await client.post(CHAT, json=BODY)).status_code == 200
    # SIGSTOP: connections are accepted by the kernel and never answered.
    own_redis.process.send_signal(signal.SIGSTOP)
    try:
        _assert_redis_unavailable(await client.get("/v1/batches"))
        # Rate limits fail open: the request is answered although every Redis call times out.
        assert (await client.post(CHAT, json=BODY)).status_code == 200
        # The commands that timed out opened the clients' breakers: the next requests are
        # answered without asking the frozen Redis (and so without waiting out its timeouts).
        assert not app.state.guard.tenancy.redis.breaker.closed
        assert not app.state.batches.store.redis.breaker.closed
        _assert_redis_unavailable(await client.get("/v1/batches"))
        assert (await client.post(CHAT, json=BODY)).status_code == 200
    finally:
        own_redis.process.send_signal(signal.SIGCONT)
    assert (await answered_again(lambda: client.get("/v1/batches"))).status_code == 200


async def test_grpc_edge_answers_unavailable_with_the_reason(upstream, own_redis):
    settings = _settings(upstream, own_redis)
    service = GatewayService(settings, Pipeline(settings))
    key, _ = await service.guard.tenancy.create_key("acme")
    running = await start_service(service, settings, "127.0.0.1:0")
    request = gateway_pb2.ChatRequest(messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi")])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            metadata = [("authorization", f"Bearer {key}")]
            await stub.Chat(request, metadata=metadata, timeout=CLIENT_TIMEOUT_S)
            own_redis.stop()
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.Chat(request, metadata=metadata, timeout=CLIENT_TIMEOUT_S)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            assert error_info(raised.value).reason == "REDIS_UNAVAILABLE"
            own_redis.start()
            answer = None
            for _ in range(RECOVERY_TRIES):
                try:
                    answer = await stub.Chat(request, metadata=metadata, timeout=CLIENT_TIMEOUT_S)
                    break
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.UNAVAILABLE
                    await asyncio.sleep(0.1)
            assert answer is not None and answer.text
    finally:
        await running.stop(None)
        await service.close()


def test_redis_server_support_really_stops(own_redis):
    """The fixture's stop ends the process, so the outage tests above test an outage."""
    pid = own_redis.process.pid
    own_redis.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.parametrize("gateway", [{"rate_limits_fail_open": True}], indirect=True)
async def test_readiness_with_redis_away_failing_open_is_degraded_but_still_in_service(gateway, own_redis):
    client, _ = gateway
    assert (await client.get("/readyz")).json()["status"] == "ready"
    own_redis.stop()
    response = await client.get("/readyz")
    # Still ready for a load balancer (the gateway serves), and says what is missing and why.
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "degraded"
    assert "Error" in response.json()["checks"]["redis"]
    assert response.json()["checks"]["router"] == "SERVING"


async def test_readiness_with_redis_away_failing_closed_is_not_ready(gateway, own_redis):
    client, _ = gateway
    own_redis.stop()
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["status"] == "not ready" and "Error" in response.json()["checks"]["redis"]


@pytest.mark.parametrize("fail_open", [True, False])
async def test_grpc_health_agrees_with_readyz_while_redis_is_away(upstream, own_redis, fail_open):
    settings = _settings(upstream, own_redis, rate_limits_fail_open=fail_open)
    service = GatewayService(settings, Pipeline(settings))
    try:
        assert await service.ready()
        own_redis.stop()
        assert await service.ready() is fail_open
    finally:
        await service.close()
