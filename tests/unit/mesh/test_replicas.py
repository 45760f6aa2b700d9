"""Replicas from DNS (mesh.replicas.DnsReplicaChannel) on a fake resolver, fake channels and a
clock of the test's own: each address a replica, re-resolution keeping the state of those that
stay, a failed resolution keeping the last good set (and counted), the last serving replica never
ejected whatever DNS answers."""

import asyncio
import socket

import grpc
import pytest
from prometheus_client import REGISTRY

from mesh.replicas import DnsReplicaChannel, dns_target, system_resolver
from mesh.settings import MeshSettings

FAIL = grpc.StatusCode.UNAVAILABLE


class _Channel:
    def __init__(self, target: str, authority: str) -> None:
        self.target, self.authority = target, authority
        self.closed = False

    async def close(self, grace: float | None = None) -> None:
        self.closed = True


class _Dns:
    def __init__(self, *answers) -> None:
        self.answer: list[str] | Exception = list(answers)

    async def __call__(self, host: str, port: int) -> list[str]:
        if isinstance(self.answer, Exception):
            raise self.answer
        return list(self.answer)


class _Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def _channel(host: str, dns: _Dns, **settings) -> DnsReplicaChannel:
    defaults = {"outlier_consecutive_errors": 2, "outlier_base_ejection_s": 10.0}
    return DnsReplicaChannel(host, 50053, _Channel, MeshSettings(**defaults | settings), dns, _Clock())


def _sample(name: str, host: str) -> float:
    return REGISTRY.get_sample_value(name, {"service": host}) or 0.0


def _fail(channel: DnsReplicaChannel, target: str, times: int) -> None:
    replica = next(replica for replica in channel.replicas if replica.target == target)
    for _ in range(times):
        channel.record(replica, FAIL)


def test_dns_targets():
    assert dns_target("dns:///inference:50053") == ("inference", 50053)
    assert dns_target("inference:50053") is None
    assert MeshSettings(inference_addr="dns:///inference.llmesh.svc.cluster.local:50053")
    bad_ones = ("dns:///inference", "dns://10.0.0.10/inference:50053", "dns:inference:50053", "dns:///a:1,b:2")
    for bad in bad_ones:
        with pytest.raises(ValueError, match="HOST:PORT"):
            MeshSettings(inference_addr=bad)


async def test_each_address_is_a_replica_named_by_the_service():
    dns = _Dns("10.0.0.1", "10.0.0.2", "fd00::3")
    channel = _channel("resolved.llmesh", dns)
    # Before any answer, calls go to gRPC's own resolution of the name.
    assert not channel.replicas and channel.pick() is channel.fallback
    assert channel.fallback.channel.target == "dns:///resolved.llmesh:50053"
    await channel.refresh()
    # What the calls sent there before it met says nothing of any replica.
    for _ in range(5):
        channel.record(channel.fallback, FAIL)
    assert channel.fallback.ejections == 0
    assert [replica.target for replica in channel.replicas] == ["10.0.0.1:50053", "10.0.0.2:50053", "[fd00::3]:50053"]
    # Each connects to its IP and stands for the service's name (:authority, certificate).
    assert {replica.channel.authority for replica in channel.replicas} == {"resolved.llmesh:50053"}
    assert _sample("llmesh_replicas", "resolved.llmesh") == 3
    assert channel.pick() in channel.replicas
    await channel.close()


async def test_re_resolution_adds_and_removes_replicas_and_keeps_the_others_state():
    dns = _Dns("10.0.0.1", "10.0.0.2", "10.0.0.3")
    channel = _channel("changing.llmesh", dns, outlier_max_ejection_percent=50)
    await channel.refresh()
    first, second, third = channel.replicas
    _fail(channel, "10.0.0.1:50053", 2)
    _fail(channel, "10.0.0.2:50053", 1)
    assert first.ejected(channel.clock()) and first.ejections == 1
    third.outstanding = 1

    dns.answer = ["10.0.0.1", "10.0.0.2", "10.0.0.4"]
    await channel.refresh()
    assert [replica.target for replica in channel.replicas] == ["10.0.0.1:50053", "10.0.0.2:50053", "10.0.0.4:50053"]
    assert channel.replicas[:2] == [first, second]
    assert first.ejected(channel.clock()) and second.consecutive_errors == 1
    assert channel.replicas[2].ejections == channel.replicas[2].consecutive_errors == 0
    assert _sample("llmesh_replicas", "changing.llmesh") == 3
    # The one gone takes no new calls; its channel stays open while its call is in flight.
    assert third.retired and not third.channel.closed
    assert all(channel.pick() is not third for _ in range(50))

    dns.answer = ["10.0.0.1"]
    await channel.refresh()
    await asyncio.sleep(0)
    assert channel.replicas == [first] and second.channel.closed
    await channel.close()
    assert third.channel.closed and first.channel.closed and channel.fallback.channel.closed


async def test_a_failed_resolution_keeps_the_last_set_and_is_counted():
    dns = _Dns("10.0.0.1", "10.0.0.2")
    channel = _channel("flaky.llmesh", dns)
    await channel.refresh()
    replicas = list(channel.replicas)
    before = _sample("llmesh_replica_resolution_failures_total", "flaky.llmesh")
    # NXDOMAIN (a headless Service whose pods are all unready), then an empty answer.
    dns.answer = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    await channel.refresh()
    dns.answer = []
    await channel.refresh()
    assert channel.replicas == replicas and not any(replica.retired for replica in replicas)
    assert _sample("llmesh_replica_resolution_failures_total", "flaky.llmesh") == before + 2
    assert _sample("llmesh_replicas", "flaky.llmesh") == 2
    await channel.close()


async def test_the_last_serving_replica_is_never_ejected_whatever_dns_answers():
    dns = _Dns("10.0.0.1", "10.0.0.2")
    channel = _channel("last.llmesh", dns, outlier_max_ejection_percent=100)
    await channel.refresh()
    _fail(channel, "10.0.0.1:50053", 2)
    ejected = channel.replicas[0]
    assert ejected.ejected(channel.clock())
    # The healthy one leaves; the ejected one, the only replica left, still takes the calls.
    dns.answer = ["10.0.0.1"]
    await channel.refresh()
    assert channel.pick() is ejected
    # A new one arrives and fails: it is the last one serving, so it stays in.
    dns.answer = ["10.0.0.1", "10.0.0.3"]
    await channel.refresh()
    _fail(channel, "10.0.0.3:50053", 4)
    assert not channel.replicas[1].ejected(channel.clock()) and channel.replicas[1].ejections == 0
    assert channel.pick() is channel.replicas[1]
    await channel.close()


async def test_resolves_again_in_the_background_until_closed():
    dns = _Dns("10.0.0.1")
    asked = []

    async def counting(host: str, port: int) -> list[str]:
        asked.append(host)
        return await dns(host, port)

    channel = DnsReplicaChannel(
        "background.llmesh", 50053, _Channel, MeshSettings(replica_dns_refresh_s=0.01), counting
    )
    await asyncio.sleep(0.1)
    dns.answer = ["10.0.0.1", "10.0.0.2"]
    await asyncio.sleep(0.1)
    assert len(channel.replicas) == 2 and len(asked) >= 5
    await channel.close()
    count = len(asked)
    await asyncio.sleep(0.05)
    assert len(asked) == count


async def test_the_system_resolver_answers_ip_literals():
    # The real getaddrinfo, on a name every machine resolves without a DNS server.
    assert "127.0.0.1" in await system_resolver("localhost", 50053)
    assert await system_resolver("10.1.2.3", 50053) == ["10.1.2.3"]
