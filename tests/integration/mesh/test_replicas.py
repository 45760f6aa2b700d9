"""Replicas behind one address (mesh.replicas) on real gRPC servers: least outstanding requests,
a failing replica ejected after 5 errors in a row and re-admitted after its ejection time,
never the last one."""

import asyncio

import grpc
import pytest

from mesh.channel import build_channel
from mesh.replicas import ReplicaChannel
from mesh.server import create_server
from mesh.settings import MeshSettings

METHOD = "/llmesh.test.v1.Echo/Call"


class _Replica:
    def __init__(self) -> None:
        self.calls = 0
        self.failing = False
        self.delay_s = 0.0

    async def call(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.calls += 1
        if self.failing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "down")
        await asyncio.sleep(self.delay_s)
        return request


@pytest.fixture
async def replicas():
    servers, fakes, addrs = [], [], []
    for _ in range(2):
        fake = _Replica()
        server, port = create_server("127.0.0.1:0", MeshSettings())
        handler = grpc.unary_unary_rpc_method_handler(fake.call)
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("llmesh.test.v1.Echo", {"Call": handler})]
        )
        await server.start()
        servers.append(server)
        fakes.append(fake)
        addrs.append(f"127.0.0.1:{port}")
    yield fakes, ",".join(addrs)
    for server in servers:
        await server.stop(None)


async def _calls(channel, count: int, concurrently: bool = False) -> list[str]:
    call = channel.unary_unary(METHOD)

    async def one() -> str:
        try:
            await call(b"x", timeout=5)
            return "ok"
        except grpc.aio.AioRpcError as error:
            return error.code().name

    if concurrently:
        return list(await asyncio.gather(*(one() for _ in range(count))))
    return [await one() for _ in range(count)]


async def test_calls_go_to_the_replica_with_fewest_outstanding(replicas):
    fakes, target = replicas
    fakes[0].delay_s = fakes[1].delay_s = 0.2
    channel = build_channel(target, MeshSettings())
    assert isinstance(channel, ReplicaChannel)
    async with channel:
        assert await _calls(channel, 10, concurrently=True) == ["ok"] * 10
    assert [fake.calls for fake in fakes] == [5, 5]


async def test_a_failing_replica_is_ejected_then_readmitted(replicas):
    fakes, target = replicas
    fakes[0].failing = True
    channel = build_channel(target, MeshSettings(outlier_base_ejection_s=1.0, retry_max_attempts=1))
    async with channel:
        outcomes = await _calls(channel, 60)
        # Ejected after its fifth error in a row (one more call may have been sent to it while
        # that error was being recorded); then everything goes to the healthy replica.
        assert 5 <= outcomes.count("UNAVAILABLE") <= 6 and outcomes[-40:] == ["ok"] * 40
        assert channel.replicas[0].ejections == 1
        fakes[0].failing = False
        await asyncio.sleep(1.1)
        before = fakes[0].calls
        assert await _calls(channel, 10) == ["ok"] * 10
        assert fakes[0].calls > before


async def test_the_last_serving_replica_is_never_ejected(replicas):
    fakes, target = replicas
    fakes[0].failing = fakes[1].failing = True
    channel = build_channel(target, MeshSettings(retry_max_attempts=1))
    async with channel:
        await _calls(channel, 40)
        assert sum(replica.ejections for replica in channel.replicas) == 1
        # Both still get traffic when all are failing: one is ejected, the other serves.
        before = [fake.calls for fake in fakes]
        await _calls(channel, 10)
        assert sum(fake.calls - b for fake, b in zip(fakes, before, strict=True)) == 10
