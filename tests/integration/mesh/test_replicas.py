"""Replicas behind one address (mesh.replicas) on real gRPC servers: least outstanding requests,
a failing replica ejected after 5 errors in a row and re-admitted after its ejection time,
never the last one.

Replicas from DNS (mesh.replicas.DnsReplicaChannel): two servers on one port of two loopback
addresses (127.0.0.1 and 127.0.0.2, as two pods of a headless Service are one port on two IPs)
behind a resolver that answers both; calls spread over them, a stopped one is ejected, and the
next resolution without it drops it. With mutual TLS, the certificate is checked against the
service's name, not the pod's IP."""

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.channel import build_channel
from mesh.replicas import DnsReplicaChannel, ReplicaChannel
from mesh.server import Health, create_server
from mesh.settings import MeshSettings
from tools.certs import generate, tls_env

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


def _serve(server: grpc.aio.Server, fake: _Replica) -> None:
    handler = grpc.unary_unary_rpc_method_handler(fake.call)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("llmesh.test.v1.Echo", {"Call": handler})])


@pytest.fixture
async def replicas():
    servers, fakes, addrs = [], [], []
    for _ in range(2):
        fake = _Replica()
        server, port = create_server("127.0.0.1:0", MeshSettings())
        _serve(server, fake)
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
    # Long enough that the 60 calls end within it on a loaded machine (at 1 s, a full-suite run
    # readmitted the failing replica before the last of them).
    channel = build_channel(target, MeshSettings(outlier_base_ejection_s=3.0, retry_max_attempts=1))
    async with channel:
        outcomes = await _calls(channel, 60)
        # Ejected after its fifth error in a row (one more call may have been sent to it while
        # that error was being recorded); then everything goes to the healthy replica.
        assert 5 <= outcomes.count("UNAVAILABLE") <= 6 and outcomes[-40:] == ["ok"] * 40
        assert channel.replicas[0].ejections == 1
        fakes[0].failing = False
        await asyncio.sleep(3.1)
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


IPS = ["127.0.0.1", "127.0.0.2"]


class _Dns:
    """A resolver whose answer the test sets."""

    def __init__(self, answer: list[str]) -> None:
        self.answer = answer
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        return list(self.answer)


async def _servers(settings: MeshSettings, register) -> tuple[list[grpc.aio.Server], int]:
    """One server on each of IPS, all on the same port (tried again if the port is taken on one)."""
    for _ in range(20):
        first, port = create_server(f"{IPS[0]}:0", settings)
        try:
            others = [create_server(f"{ip}:{port}", settings)[0] for ip in IPS[1:]]
        except RuntimeError:
            continue
        servers = [first, *others]
        for server in servers:
            await register(server)
            await server.start()
        return servers, port
    raise RuntimeError("no port free on every loopback address")


@pytest.fixture
async def pods():
    fakes = [_Replica() for _ in IPS]
    for fake in fakes:
        fake.delay_s = 0.05
    registered = iter(fakes)

    async def register(server: grpc.aio.Server) -> None:
        _serve(server, next(registered))

    servers, port = await _servers(MeshSettings(), register)
    yield fakes, servers, port
    for server in servers:
        await server.stop(None)


async def test_calls_spread_a_stopped_replica_is_ejected_then_dropped(pods):
    fakes, servers, port = pods
    dns = _Dns(IPS)
    settings = MeshSettings(retry_max_attempts=1, replica_dns_refresh_s=3600, outlier_max_ejection_percent=50)
    channel = build_channel(f"dns:///echo.test:{port}", settings, resolver=dns)
    assert isinstance(channel, DnsReplicaChannel)
    async with channel:
        await channel.refresh()
        assert [replica.target for replica in channel.replicas] == [f"{ip}:{port}" for ip in IPS]
        assert dns.asked[0] == ("echo.test", port)
        assert await _calls(channel, 10, concurrently=True) == ["ok"] * 10
        assert [fake.calls for fake in fakes] == [5, 5]

        await servers[1].stop(None)
        # One at a time: each call goes to either replica (none has calls outstanding) until
        # the stopped one is ejected at its fifth failure (one more may have been sent while
        # that one was being recorded); the other answers the rest.
        outcomes = await _calls(channel, 40)
        assert 5 <= outcomes.count("UNAVAILABLE") <= 6 and outcomes[-10:] == ["ok"] * 10
        stopped, serving = channel.replicas[1], channel.replicas[0]
        assert stopped.ejections == 1 and serving.ejections == 0

        dns.answer = IPS[:1]
        await channel.refresh()
        assert channel.replicas == [serving] and stopped.retired
        assert await _calls(channel, 4, concurrently=True) == ["ok"] * 4


async def test_replicas_found_in_the_background(pods):
    fakes, _, port = pods
    dns = _Dns(IPS[:1])
    settings = MeshSettings(replica_dns_refresh_s=0.05)
    async with build_channel(f"dns:///echo.test:{port}", settings, resolver=dns) as channel:
        for _ in range(100):
            if channel.replicas:
                break
            await asyncio.sleep(0.01)
        assert await _calls(channel, 4, concurrently=True) == ["ok"] * 4
        dns.answer = IPS
        await asyncio.sleep(0.3)
        assert len(channel.replicas) == 2 and len(dns.asked) >= 3
        assert await _calls(channel, 4, concurrently=True) == ["ok"] * 4
    assert fakes[1].calls == 2


async def test_calls_before_the_first_answer_go_through_grpcs_own_resolution(pods):
    fakes, _, port = pods

    async def slow(host: str, port: int) -> list[str]:
        await asyncio.sleep(10)
        return IPS

    # localhost: a name gRPC's resolver knows without the fake one (127.0.0.1 here).
    async with build_channel(f"dns:///localhost:{port}", MeshSettings(), resolver=slow) as channel:
        assert await _calls(channel, 2, concurrently=True) == ["ok"] * 2 and not channel.replicas
    assert fakes[0].calls == 2


def _tls(directory, service, monkeypatch) -> MeshSettings:
    for name, value in tls_env(directory, service).items():
        monkeypatch.setenv(name, value)
    return MeshSettings()


async def test_mutual_tls_checks_the_service_name_on_every_pod(tmp_path, monkeypatch):
    # The certificates name the service, localhost and 127.0.0.1, not 127.0.0.2.
    generate(tmp_path, services=["preprocess", "gateway"])
    server_settings = _tls(tmp_path, "preprocess", monkeypatch)

    async def register(server: grpc.aio.Server) -> None:
        await Health(server, []).set(True)

    servers, port = await _servers(server_settings, register)
    settings = _tls(tmp_path, "gateway", monkeypatch).model_copy(update={"retry_max_attempts": 1})
    try:
        async with build_channel(f"dns:///preprocess:{port}", settings, resolver=_Dns(IPS)) as channel:
            await channel.refresh()
            for replica in channel.replicas:
                stub = health_pb2_grpc.HealthStub(replica.channel)
                response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert response.status == health_pb2.HealthCheckResponse.SERVING, replica.target
        # The same pods under a name their certificate does not carry are refused.
        async with build_channel(f"dns:///router:{port}", settings, resolver=_Dns(IPS)) as channel:
            await channel.refresh()
            for replica in channel.replicas:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await health_pb2_grpc.HealthStub(replica.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, replica.target
    finally:
        for server in servers:
            await server.stop(None)
