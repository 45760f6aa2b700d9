"""Several replicas of a service behind one logical address (``LLMESH_INFERENCE_ADDR=a:1,b:2``):
each call goes to the replica with the fewest calls outstanding, and a replica that fails
``outlier_consecutive_errors`` calls in a row is ejected for ``outlier_base_ejection_s`` times the
number of times it has been ejected, as Envoy's outlier detection does — but never so many that
more than ``outlier_max_ejection_percent`` of the replicas (and at least one) are out, and never
the last one serving.

Only failures of the replica count (UNAVAILABLE, INTERNAL, UNKNOWN): a caller's bad request, a
refusal under load or a cancelled call say nothing about its health.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client import Counter

from mesh.settings import MeshSettings

log = logging.getLogger(__name__)

# Health probes say nothing about how a replica serves calls (they are never shed or faulted).
_UNCOUNTED_PREFIX = "/grpc.health.v1."
_REPLICA_FAILURES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})

# What a channel's unary_unary and its kin return (grpc.aio.UnaryUnaryMultiCallable and so on):
# called with a request, it starts the call.
MultiCallable = Callable[..., Any]

EJECTIONS = Counter("llmesh_replica_ejections_total", "Replicas ejected by outlier detection", ["target"])


@dataclass
class Replica:
    target: str
    channel: grpc.aio.Channel
    outstanding: int = 0
    consecutive_errors: int = 0
    ejections: int = 0
    ejected_until: float = 0.0
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
        self.max_ejected = max(1, math.floor(len(replicas) * settings.outlier_max_ejection_percent / 100))
        self.clock = clock
        self._pending: set[asyncio.Task[grpc.StatusCode]] = set()

    def pick(self) -> Replica:
        now = self.clock()
        serving = [replica for replica in self.replicas if not replica.ejected(now)] or self.replicas
        fewest = min(replica.outstanding for replica in serving)
        return random.choice([replica for replica in serving if replica.outstanding == fewest])

    def record(self, replica: Replica, code: grpc.StatusCode) -> None:
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
        if not counted:
            return
        # A finished call's code is read with an await (its result is there already), so a call
        # picked in the meantime does not know of this outcome yet.
        task = asyncio.ensure_future(call.code())
        self._pending.add(task)

        def recorded(done: asyncio.Task[grpc.StatusCode]) -> None:
            self._pending.discard(done)
            if not done.cancelled() and done.exception() is None:
                self.record(replica, done.result())

        task.add_done_callback(recorded)

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> MultiCallable:
        return self._multicallable("unary_unary", method, *args, **kwargs)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> MultiCallable:
        return self._multicallable("unary_stream", method, *args, **kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> MultiCallable:
        return self._multicallable("stream_unary", method, *args, **kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> MultiCallable:
        return self._multicallable("stream_stream", method, *args, **kwargs)

    async def close(self, grace: float | None = None) -> None:
        for replica in self.replicas:
            await replica.channel.close(grace)

    async def __aenter__(self) -> ReplicaChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
