"""mesh: servers and channels built the one way, tested in-process on port 0."""

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from mesh import routing, semconv
from mesh.channel import build_channel
from mesh.deadlines import remaining_s
from mesh.errors import abort, error_info
from mesh.server import Health, create_server
from mesh.settings import MeshSettings

SETTINGS = MeshSettings(default_deadline_s=5.0)
ECHO_SERVICE = "test.Echo"


def _bytes_method(behavior):
    return grpc.unary_unary_rpc_method_handler(behavior, lambda b: b, lambda b: b)


async def _start(handlers: dict, ready: bool = True):
    server, port = create_server("127.0.0.1:0", SETTINGS)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(ECHO_SERVICE, handlers)])
    health = Health(server, [ECHO_SERVICE])
    await server.start()

    async def check():
        return ready

    watcher = asyncio.create_task(health.watch(check, interval_s=0.05))
    return server, port, watcher


async def _stop(server, watcher):
    watcher.cancel()
    await server.stop(None)


async def test_health_reflects_readiness_check():
    server, port, watcher = await _start({}, ready=False)
    try:
        async with build_channel(f"127.0.0.1:{port}", SETTINGS) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            await asyncio.sleep(0.2)
            for service in ("", ECHO_SERVICE):
                response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
                assert response.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await _stop(server, watcher)

    server, port, watcher = await _start({}, ready=True)
    try:
        async with build_channel(f"127.0.0.1:{port}", SETTINGS) as channel:
            await asyncio.sleep(0.2)
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=ECHO_SERVICE)
            )
            assert response.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await _stop(server, watcher)


async def test_reflection_lists_services():
    server, port, watcher = await _start({})
    try:
        async with build_channel(f"127.0.0.1:{port}", SETTINGS) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            names = [s.name async for r in responses for s in r.list_services_response.service]
        assert ECHO_SERVICE in names and "grpc.health.v1.Health" in names
    finally:
        await _stop(server, watcher)


async def test_deadline_propagates_to_downstream_call():
    async def remaining(request, context):
        return f"{context.time_remaining():.3f}".encode()

    downstream, down_port, down_watcher = await _start({"Remaining": _bytes_method(remaining)})
    channel = build_channel(f"127.0.0.1:{down_port}", SETTINGS)

    async def relay(request, context):
        # No explicit timeout here: the inbound deadline must bound the outbound call.
        assert remaining_s() is not None
        return await channel.unary_unary(f"/{ECHO_SERVICE}/Remaining")(b"")

    upstream, up_port, up_watcher = await _start({"Relay": _bytes_method(relay)})
    try:
        async with build_channel(f"127.0.0.1:{up_port}", SETTINGS) as client:
            seen = float(await client.unary_unary(f"/{ECHO_SERVICE}/Relay")(b"", timeout=1.0))
        # The default deadline is 5 s; the downstream call saw at most the caller's 1 s.
        assert 0 < seen <= 1.05  # a few ms of clock rounding
    finally:
        await channel.close()
        await _stop(upstream, up_watcher)
        await _stop(downstream, down_watcher)


async def test_default_deadline_applies_when_caller_sets_none():
    async def remaining(request, context):
        return f"{context.time_remaining():.3f}".encode()

    server, port, watcher = await _start({"Remaining": _bytes_method(remaining)})
    try:
        async with build_channel(f"127.0.0.1:{port}", SETTINGS) as channel:
            seen = float(await channel.unary_unary(f"/{ECHO_SERVICE}/Remaining")(b""))
        assert 4.0 < seen <= 5.05  # the server clock reads a few ms of rounding
    finally:
        await _stop(server, watcher)


async def test_error_details_travel_with_status():
    async def refuse(request, context):
        await abort(context, grpc.StatusCode.NOT_FOUND, "no such model: x", "MODEL_NOT_FOUND", model="x")

    server, port, watcher = await _start({"Refuse": _bytes_method(refuse)})
    try:
        async with build_channel(f"127.0.0.1:{port}", SETTINGS) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await channel.unary_unary(f"/{ECHO_SERVICE}/Refuse")(b"")
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        info = error_info(raised.value)
        assert info is not None and info.reason == "MODEL_NOT_FOUND" and info.metadata["model"] == "x"
    finally:
        await _stop(server, watcher)


async def test_unavailable_is_retried_by_service_config():
    calls = 0

    async def flaky(request, context):
        nonlocal calls
        calls += 1
        if calls < 3:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        return b"ok"

    server, port, watcher = await _start({"Flaky": _bytes_method(flaky)})
    try:
        async with build_channel(f"127.0.0.1:{port}", SETTINGS) as channel:
            assert await channel.unary_unary(f"/{ECHO_SERVICE}/Flaky")(b"") == b"ok"
        assert calls == 3
    finally:
        await _stop(server, watcher)


async def test_other_errors_are_not_retried():
    calls = 0

    async def broken(request, context):
        nonlocal calls
        calls += 1
        await context.abort(grpc.StatusCode.INTERNAL, "boom")

    server, port, watcher = await _start({"Broken": _bytes_method(broken)})
    try:
        async with build_channel(f"127.0.0.1:{port}", SETTINGS) as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await channel.unary_unary(f"/{ECHO_SERVICE}/Broken")(b"")
        assert calls == 1
    finally:
        await _stop(server, watcher)


async def test_assignment_travels_as_headers_and_in_flight_calls_are_counted():
    """What Istio routes A/B variants by (k8s/components/istio), and what the CPU tiers scale on."""
    seen: list[dict[str, str]] = []
    in_flight: list[float] = []

    async def record(request, context):
        seen.append(dict(context.invocation_metadata()))
        in_flight.append(REGISTRY.get_sample_value(semconv.METRIC_RPC_SERVER_IN_FLIGHT))
        return request

    server, port, watcher = await _start({"Echo": _bytes_method(record)})
    try:
        async with build_channel(f"127.0.0.1:{port}", SETTINGS) as channel:
            echo = channel.unary_unary(f"/{ECHO_SERVICE}/Echo")

            async def assigned():
                routing.set_assignment({"router-threshold": "b", "demo-models": "a"})
                await echo(b"x")

            await asyncio.create_task(assigned())
            # Another request's task never sees that assignment.
            await echo(b"y")
    finally:
        await _stop(server, watcher)
    assert seen[0]["x-llmesh-experiment-router-threshold"] == "b"
    assert seen[0]["x-llmesh-experiment-demo-models"] == "a"
    assert not any(key.startswith(routing.HEADER_PREFIX) for key in seen[1])
    assert in_flight == [1.0, 1.0]
    assert REGISTRY.get_sample_value(semconv.METRIC_RPC_SERVER_IN_FLIGHT) == 0.0
