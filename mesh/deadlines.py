"""Deadline propagation: an outbound call never outlives the inbound call that caused it.

The server interceptor records the inbound deadline in a context variable; the client
interceptor gives every outbound call the earliest of its own timeout, the inbound deadline
and the default deadline (a longer one for calls answered by a stream), so every call has one.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeAlias

import grpc

_inbound_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "llmesh_inbound_deadline", default=None
)


def remaining_s() -> float | None:
    """Seconds left before the inbound deadline, or None outside a call with a deadline."""
    deadline = _inbound_deadline.get()
    return None if deadline is None else deadline - time.monotonic()


_arrived: contextvars.ContextVar[float | None] = contextvars.ContextVar("llmesh_request_arrived", default=None)


def mark_arrival() -> None:
    """The request being served arrived now (the REST edge, before it queues for admission):
    its deadline counts from here, so a wait in the edge's queue is spent from it."""
    _arrived.set(time.monotonic())


@contextlib.contextmanager
def request_deadline(seconds: float) -> Iterator[None]:
    """One deadline for a request that begins here, at an edge that receives none (REST): every
    call made within the block gets what is left of it, so the hops share it instead of each
    taking a whole default from its own start. It counts from the request's arrival when the
    edge marked it. An earlier inbound deadline (a gRPC caller's) is kept. Calls answered by a
    stream are started within the block, so they are bounded too."""
    deadline = (_arrived.get() or time.monotonic()) + seconds
    current = _inbound_deadline.get()
    token = _inbound_deadline.set(deadline if current is None else min(current, deadline))
    try:
        yield
    finally:
        _inbound_deadline.reset(token)


# A method handler's behaviour: (request or request iterator, context) -> response or iterator.
Behavior = Callable[..., Any]
# What a behaviour is called with besides its request (grpc.aio's stubs name no other type).
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def wrap_handler(
    handler: grpc.RpcMethodHandler | None,
    wrap: Callable[[Behavior, bool, bool], Behavior],
) -> grpc.RpcMethodHandler | None:
    """Return a copy of an aio method handler whose behaviour is ``wrap(behaviour, ...)``."""
    if handler is None:
        return None
    if handler.unary_unary:
        factory, behavior = grpc.unary_unary_rpc_method_handler, handler.unary_unary
    elif handler.unary_stream:
        factory, behavior = grpc.unary_stream_rpc_method_handler, handler.unary_stream
    elif handler.stream_unary:
        factory, behavior = grpc.stream_unary_rpc_method_handler, handler.stream_unary
    else:
        factory, behavior = grpc.stream_stream_rpc_method_handler, handler.stream_stream
    return factory(
        wrap(behavior, handler.request_streaming, handler.response_streaming),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _with_deadline(behavior: Behavior, _request_streaming: bool, response_streaming: bool) -> Behavior:
    # grpc.aio runs every RPC in its own task, whose context is a copy: setting the variable
    # there needs no reset (a reset would fail when a cancelled stream is closed from
    # another task).
    def enter(context: Context) -> None:
        remaining = context.time_remaining()
        _inbound_deadline.set(None if remaining is None else time.monotonic() + remaining)

    if response_streaming:

        async def stream_behavior(request: Any, context: Context) -> AsyncIterator[Any]:
            enter(context)
            async for response in behavior(request, context):
                yield response

        return stream_behavior

    async def unary_behavior(request: Any, context: Context) -> Any:
        enter(context)
        return await behavior(request, context)

    return unary_behavior


class ApplicationCallInterceptor(grpc.aio.ServerInterceptor):
    """Wraps the behaviour of every application RPC with ``self.wrap``; health and reflection
    calls pass untouched (an overloaded or faulty process is alive, and says so)."""

    EXEMPT_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")

    def wrap(self, behavior: Behavior, request_streaming: bool, response_streaming: bool) -> Behavior:
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler_call_details.method.startswith(self.EXEMPT_PREFIXES):
            return handler
        return wrap_handler(handler, self.wrap)


class DeadlineServerInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        return wrap_handler(await continuation(handler_call_details), _with_deadline)


# What a client interceptor calls on: (call details, request) -> the call.
Continuation = Callable[..., Any]


class DetailsClientInterceptor:
    """Base of client interceptors that only change a call's details (timeout, metadata)."""

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        raise NotImplementedError

    def _stream_details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        """The details of a call answered by a stream; the same as any call's unless overridden."""
        return self._details(details)

    async def intercept_unary_unary(
        self, continuation: Continuation, details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(
        self, continuation: Continuation, details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._stream_details(details), request)

    async def intercept_stream_unary(
        self, continuation: Continuation, details: grpc.aio.ClientCallDetails, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(details), request_iterator)

    async def intercept_stream_stream(
        self, continuation: Continuation, details: grpc.aio.ClientCallDetails, request_iterator: Any
    ) -> Any:
        return await continuation(self._stream_details(details), request_iterator)


def for_every_call_kind(base: type[DetailsClientInterceptor], *args: Any) -> list[grpc.aio.ClientInterceptor]:
    """One instance per aio call kind: grpc.aio picks interceptors by their base class."""
    kinds = (
        grpc.aio.UnaryUnaryClientInterceptor,
        grpc.aio.UnaryStreamClientInterceptor,
        grpc.aio.StreamUnaryClientInterceptor,
        grpc.aio.StreamStreamClientInterceptor,
    )
    return [type(f"{base.__name__}{kind.__name__}", (base, kind), {})(*args) for kind in kinds]


class DeadlineClientInterceptor(DetailsClientInterceptor):
    def __init__(self, default_deadline_s: float, stream_deadline_s: float) -> None:
        self.default_deadline_s = default_deadline_s
        self.stream_deadline_s = stream_deadline_s

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        return self._bounded(details, self.default_deadline_s)

    def _stream_details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        return self._bounded(details, self.stream_deadline_s)

    def _bounded(self, details: grpc.aio.ClientCallDetails, default_s: float) -> grpc.aio.ClientCallDetails:
        candidates = [default_s if details.timeout is None else details.timeout]
        inbound = remaining_s()
        if inbound is not None:
            candidates.append(max(inbound, 0.0))
        return grpc.aio.ClientCallDetails(
            details.method,
            min(candidates),
            details.metadata,
            details.credentials,
            details.wait_for_ready,
        )


def client_interceptors(default_deadline_s: float, stream_deadline_s: float) -> list[grpc.aio.ClientInterceptor]:
    return for_every_call_kind(DeadlineClientInterceptor, default_deadline_s, stream_deadline_s)
