"""Several replicas of a service behind one logical address (``LLMESH_INFERENCE_ADDR=a:1,b:2``):
each call goes to the replica with the fewest calls outstanding, and a replica that fails
``outlier_consecutive_errors`` calls in a row is ejected for ``outlier_base_ejection_s`` times the
number of times it has been ejected, as Envoy's outlier detection does — but never so many that
more than ``outlier_max_ejection_percent`` of the replicas (and at least one) are out, and never
the last one serving.

Only failures of the replica count (UNAVAILABLE, INTERNAL, UNKNOWN): a caller's bad request, a
refusal under load or a cancelled call say nothing about its health.

The replicas may also come from DNS (``LLMESH_INFERENCE_ADDR=dns:///inference:50053``, a
Kubernetes headless Service, whose name resolves to the addresses of its ready pods): the name is
resolved again every ``replica_dns_refresh_s``, each address is a replica, and those that stay
keep their state (calls outstanding, errors, ejections). gRPC's own ``dns:///`` resolver would
balance the same addresses round robin, without outlier ejection; this one feeds the balancer above.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client import Counter, Gauge

from mesh.settings import DNS_SCHEME, MeshSettings

log = logging.getLogger(__name__)

# Health probes say nothing about how a replica serves calls (they are never shed or faulted).
_UNCOUNTED_PREFIX = "/grpc.health.v1."
_REPLICA_FAILURES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})

# What a channel's unary_unary and its kin return (grpc.aio.UnaryUnaryMultiCallable and so on):
# called with a request, it starts the call.
MultiCallable = Callable[..., Any]

EJECTIONS = Counter("llmesh_replica_ejections_total", "Replicas ejected by outlier detection", ["target"])
# Labelled by the DNS name of a dns:/// target (its service).
REPLICAS = Gauge("llmesh_replicas", "Replicas of a service the last good DNS resolution found", ["service"])
RESOLUTION_FAILURES = Counter(
    "llmesh_replica_resolution_failures_total",
    "DNS resolutions of a service's replicas that failed or found none (the last good set was kept)",
    ["service"],
)

# The addresses a host name resolves to (IP literals), for a port; a test passes its own.
Resolver = Callable[[str, int], Awaitable[list[str]]]
# A channel to one replica: its target, and the HOST:PORT it stands for (its :authority, and
# HOST the name its certificate must carry).
Connect = Callable[[str, str], grpc.aio.Channel]


def dns_target(target: str) -> tuple[str, int] | None:
    """``dns:///HOST:PORT`` as (HOST, PORT); None for any other target."""
    if not target.startswith(DNS_SCHEME):
        return None
    host, _, port = target.removeprefix(DNS_SCHEME).rpartition(":")
    return host, int(port)


async def system_resolver(host: str, port: int) -> list[str]:
    """The A and AAAA records of ``host``, by the system's resolver (getaddrinfo, in a thread of
    the loop's executor, so the loop never waits on DNS)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def _host_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ipaddress.ip_address(ip.partition("%")[0]).version == 6 else f"{ip}:{port}"


@dataclass
class Replica:
    target: str
    channel: grpc.aio.Channel
    outstanding: int = 0
    consecutive_errors: int = 0
    ejections: int = 0
    ejected_until: float = 0.0
    # Gone from the DNS answer: takes no new calls, closed once those in flight have ended.
    retired: bool = False
    _callables: dict[tuple[str, str], MultiCallable] = field(default_factory=dict)

    def ejected(self, now: float) -> bool:
        return now < self.ejected_until


class ReplicaChannel:
    """What mesh.channel.build_channel returns for a target naming several replicas; stubs use
    it as they use a grpc.aio.Channel."""

    def __init__(
        self, replicas: list[Replica], settings: MeshSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.replicas = replicas
        self.consecutive_errors = settings.outlier_consecutive_errors
        self.base_ejection_s = settings.outlier_base_ejection_s
        self.max_ejection_percent = settings.outlier_max_ejection_percent
        self.clock = clock
        self._pending: set[asyncio.Task[Any]] = set()
        # Retired replicas with calls still in flight (mesh.replicas.DnsReplicaChannel).
        self._retiring: list[Replica] = []

    @property
    def max_ejected(self) -> int:
        # Of the replicas there are now: with DNS, their number changes.
        return max(1, math.floor(len(self.replicas) * self.max_ejection_percent / 100))

    def pick(self) -> Replica:
        now = self.clock()
        serving = [replica for replica in self.replicas if not replica.ejected(now)] or self.replicas
        fewest = min(replica.outstanding for replica in serving)
        return random.choice([replica for replica in serving if replica.outstanding == fewest])

    def record(self, replica: Replica, code: grpc.StatusCode) -> None:
        if replica.retired:
            return
        if code not in _REPLICA_FAILURES:
            replica.consecutive_errors = 0
            return
        replica.consecutive_errors += 1
        if replica.consecutive_errors < self.consecutive_errors:
            return
        now = self.clock()
        ejected = sum(other.ejected(now) for other in self.replicas)
        if replica.ejected(now) or ejected >= self.max_ejected or ejected >= len(self.replicas) - 1:
            return
        replica.ejections += 1
        replica.consecutive_errors = 0
        replica.ejected_until = now + self.base_ejection_s * replica.ejections
        EJECTIONS.labels(replica.target).inc()
        log.warning(
            "replica ejected",
            extra={"target": replica.target, "for_s": self.base_ejection_s * replica.ejections, "code": code.name},
        )

    def _call(self, kind: str, method: str, *args: Any, **kwargs: Any) -> tuple[Replica, MultiCallable]:
        replica = self.pick()
        key = (kind, method)
        if key not in replica._callables:
            replica._callables[key] = getattr(replica.channel, kind)(method, *args, **kwargs)
        return replica, replica._callables[key]

    def _multicallable(self, kind: str, method: str, *args: Any, **kwargs: Any) -> MultiCallable:
        channel = self

        def invoke(*call_args: Any, **call_kwargs: Any) -> Any:
            replica, multicallable = channel._call(kind, method, *args, **kwargs)
            call = multicallable(*call_args, **call_kwargs)
            replica.outstanding += 1
            counted = not method.startswith(_UNCOUNTED_PREFIX)
            call.add_done_callback(lambda done: channel._finished(replica, done, counted))
            return call

        return invoke

    def _finished(self, replica: Replica, call: grpc.aio.Call, counted: bool) -> None:
        replica.outstanding -= 1
        if replica.retired and replica.outstanding == 0 and replica in self._retiring:
            self._retiring.remove(replica)
            self._background(replica.channel.close())
        if not counted:
            return
        # A finished call's code is read with an await (its result is there already), so a call
        # picked in the meantime does not know of this outcome yet.
        task = self._background(call.code())

        def recorded(done: asyncio.Task[grpc.StatusCode]) -> None:
            if not done.cancelled() and done.exception() is None:
                self.record(replica, done.result())

        task.add_done_callback(recorded)

    def _background(self, work: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> MultiCallable:
        return self._multicallable("unary_unary", method, *args, **kwargs)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> MultiCallable:
        return self._multicallable("unary_stream", method, *args, **kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> MultiCallable:
        return self._multicallable("stream_unary", method, *args, **kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> MultiCallable:
        return self._multicallable("stream_stream", method, *args, **kwargs)

    async def close(self, grace: float | None = None) -> None:
        for replica in [*self.replicas, *self._retiring]:
            await replica.channel.close(grace)
        self._retiring.clear()
        for task in list(self._pending):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> ReplicaChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class DnsReplicaChannel(ReplicaChannel):
    """The replicas of a ``dns:///HOST:PORT`` target: the addresses HOST resolves to, resolved
    again every ``replica_dns_refresh_s`` in the background (a call never waits on DNS).

    An address that appears becomes a replica; one that is gone takes no new calls and its
    channel closes once its calls in flight have ended (a pod that drains leaves the answer
    while it finishes them); the others keep their state. A resolution that fails or finds no
    address keeps the last good set (a headless Service whose pods are all unready answers
    NXDOMAIN) and counts ``llmesh_replica_resolution_failures_total``. Until the first one has
    answered, calls go to a channel that gRPC resolves itself (pick_first over the same name),
    so that a call made at start is not refused for want of an answer.

    Every replica's channel connects to its IP but names HOST as its :authority and as the name
    the server's certificate must carry: mutual TLS certificates for the service's name verify
    against connections to each of its pods."""

    def __init__(
        self,
        host: str,
        port: int,
        connect: Connect,
        settings: MeshSettings,
        resolver: Resolver = system_resolver,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__([], settings, clock)
        self.host, self.port = host, port
        self.connect, self.resolver = connect, resolver
        self.refresh_s = settings.replica_dns_refresh_s
        self.authority = f"{host}:{port}"
        self.fallback = Replica(DNS_SCHEME + self.authority, connect(DNS_SCHEME + self.authority, self.authority))
        self._refresher: asyncio.Task[None] | None = None
        self._closed = False
        # Built inside a running loop (as services build their channels), the first resolution
        # starts at once; otherwise with the first call.
        with contextlib.suppress(RuntimeError):
            self._start()

    def _start(self) -> None:
        if self._refresher is None and not self._closed:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.refresh_s)

    async def refresh(self) -> None:
        """Resolves the name once and updates the replicas (the background loop's step)."""
        try:
            addresses = await self.resolver(self.host, self.port)
            if not addresses:
                raise LookupError("no addresses")
        except asyncio.CancelledError:
            raise
        except Exception as error:
            RESOLUTION_FAILURES.labels(self.host).inc()
            log.warning(
                "replica resolution failed; keeping the last replicas",
                extra={"upstream": self.host, "replicas": len(self.replicas), "error": repr(error)},
            )
            return
        self.update([_host_port(address, self.port) for address in addresses])

    def update(self, targets: list[str]) -> None:
        """The replicas become ``targets``: those already there keep their state."""
        wanted = set(targets)
        kept = []
        for replica in self.replicas:
            if replica.target in wanted:
                kept.append(replica)
                continue
            replica.retired = True
            if replica.outstanding:
                self._retiring.append(replica)
            else:
                self._background(replica.channel.close())
        known = {replica.target for replica in kept}
        added = [Replica(target, self.connect(target, self.authority)) for target in sorted(wanted - known)]
        removed = len(self.replicas) - len(kept)
        self.replicas = kept + added
        REPLICAS.labels(self.host).set(len(self.replicas))
        if added or removed:
            log.info(
                "replicas changed",
                extra={"upstream": self.host, "added": [r.target for r in added], "removed": removed},
            )

    def pick(self) -> Replica:
        self._start()
        return super().pick() if self.replicas else self.fallback

    def record(self, replica: Replica, code: grpc.StatusCode) -> None:
        # The fallback stands for no replica in particular: nothing to eject.
        if replica is not self.fallback:
            super().record(replica, code)

    async def close(self, grace: float | None = None) -> None:
        self._closed = True
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await self.fallback.channel.close(grace)
        await super().close(grace)
