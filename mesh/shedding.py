"""Load shedding: a bounded number of requests run at once, a bounded number wait, and the rest
are refused at once (RESOURCE_EXHAUSTED over gRPC, 429 over REST), so that an overloaded process
keeps the latency of what it accepts instead of queueing without end.

Waiting interactive requests are admitted before waiting batch requests, and an interactive
request that finds the queue full takes the place of the newest waiting batch request. Batch
traffic is recognised by the ``x-llmesh-priority: batch`` header, which the batch worker's
channels send (``settings.request_priority``) and every service passes on to its own calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import grpc
from prometheus_client import Counter, Gauge

from mesh.deadlines import ApplicationCallInterceptor, Behavior, Context, DetailsClientInterceptor, for_every_call_kind
from mesh.errors import abort

PRIORITY_HEADER = "x-llmesh-priority"
INTERACTIVE = "interactive"
BATCH = "batch"
PRIORITIES = (INTERACTIVE, BATCH)
OVERLOADED = "OVERLOADED"
# What a refused caller is told to wait before trying again.
RETRY_AFTER_S = 1

SHED = Counter("llmesh_shed_requests_total", "Requests refused because the process was at capacity", ["priority"])
QUEUED = Gauge("llmesh_admission_queued", "Requests waiting for a slot", ["priority"])

_priority: contextvars.ContextVar[str | None] = contextvars.ContextVar("llmesh_priority", default=None)


class Overloaded(Exception):
    """No slot and no room in the queue."""


class Admission:
    """At most ``max_concurrent`` holders at once and ``max_queued`` waiting; 0 concurrency
    means no limit. The process's own metrics are kept by the two hooks, which an admission of
    something narrower (the inference service's per model) replaces with its own."""

    def __init__(self, max_concurrent: int, max_queued: int) -> None:
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self.in_flight = 0
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {priority: deque() for priority in PRIORITIES}

    @property
    def queued(self) -> int:
        return sum(len(queue) for queue in self._waiting.values())

    @contextlib.asynccontextmanager
    async def slot(self, priority: str = INTERACTIVE) -> AsyncIterator[None]:
        """Hold a slot for as long as the block runs; raises Overloaded when there is none."""
        await self.acquire(priority)
        try:
            yield
        finally:
            self.release()

    async def acquire(self, priority: str = INTERACTIVE) -> None:
        """Wait for a slot (in priority order); raises Overloaded at once when the queue is full."""
        if not self.max_concurrent:
            return
        if self.in_flight < self.max_concurrent and not self.queued:
            self.in_flight += 1
            return
        if self.queued >= self.max_queued:
            batch = self._waiting[BATCH]
            if priority == BATCH or not batch:
                self.shed(priority)
                raise Overloaded
            # The newest batch request gives its place to this interactive one.
            self.shed(BATCH)
            batch.pop().set_exception(Overloaded())
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[priority].append(waiter)
        self.queue_changed(priority)
        try:
            # The slot is handed over by release (in_flight is not decremented in between).
            await waiter
        except asyncio.CancelledError:
            if waiter in self._waiting[priority]:
                self._waiting[priority].remove(waiter)
            elif waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Cancelled just after being handed the slot: hand it on.
                self.release()
            raise
        finally:
            self.queue_changed(priority)

    def shed(self, priority: str) -> None:
        """A request of ``priority`` was refused (or lost its place in the queue)."""
        SHED.labels(priority).inc()

    def queue_changed(self, priority: str) -> None:
        QUEUED.labels(priority).set(len(self._waiting[priority]))

    def release(self) -> None:
        """Give the slot to the first waiter of the highest priority, or free it."""
        if not self.max_concurrent:
            return
        for priority in PRIORITIES:
            queue = self._waiting[priority]
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        self.in_flight -= 1


def current_priority() -> str | None:
    return _priority.get()


def set_priority(priority: str) -> None:
    """Every call this task (and the tasks it starts) makes from now on carries this priority."""
    _priority.set(priority)


def _inbound_priority(context: Context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == PRIORITY_HEADER:
            return BATCH if value == BATCH else INTERACTIVE
    return INTERACTIVE


class SheddingServerInterceptor(ApplicationCallInterceptor):
    """Admission control of every RPC (streams hold their slot to the end); also makes the
    caller's priority the priority of the calls the handler makes."""

    def __init__(self, max_concurrent: int, max_queued: int) -> None:
        self.admission = Admission(max_concurrent, max_queued)

    def wrap(self, behavior: Behavior, _request_streaming: bool, response_streaming: bool) -> Behavior:
        admission = self.admission

        async def refuse(context: Context, priority: str) -> None:
            await abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"The server is at capacity ({admission.max_concurrent} running, {admission.max_queued} waiting); "
                f"retry in {RETRY_AFTER_S} s.",
                OVERLOADED,
                retry_after=str(RETRY_AFTER_S),
                priority=priority,
            )

        if response_streaming:

            async def stream_behavior(request: Any, context: Context) -> AsyncIterator[Any]:
                priority = _inbound_priority(context)
                set_priority(priority)
                try:
                    async with admission.slot(priority), contextlib.aclosing(behavior(request, context)) as responses:
                        async for response in responses:
                            yield response
                except Overloaded:
                    await refuse(context, priority)

            return stream_behavior

        async def unary_behavior(request: Any, context: Context) -> Any:
            priority = _inbound_priority(context)
            set_priority(priority)
            try:
                async with admission.slot(priority):
                    return await behavior(request, context)
            except Overloaded:
                await refuse(context, priority)

        return unary_behavior


class PriorityClientInterceptor(DetailsClientInterceptor):
    """Sends the current request's priority, or else the process's own (a batch worker's)."""

    def __init__(self, default: str) -> None:
        self.default = default

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        priority = _priority.get() or self.default
        if priority == INTERACTIVE:
            return details
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            (*(details.metadata or ()), (PRIORITY_HEADER, priority)),
            details.credentials,
            details.wait_for_ready,
        )


def client_interceptors(default: str) -> list[grpc.aio.ClientInterceptor]:
    return for_every_call_kind(PriorityClientInterceptor, default)
