"""Co-location: a service hosted by the process that calls it, called without a network hop.

``llmesh up --colocate`` runs the four gRPC services inside the gateway's process
(``python -m cli.colocated``). Each is still served on its own gRPC address, for every other
caller (the batch worker, probes, a CLI), and is also registered here under that address, so
that ``mesh.channel.build_channel`` gives this process's own callers a ``LocalChannel`` to it:
the same generated stubs and messages, the same status codes and ErrorInfo details, deadlines,
metadata and server interceptors (deadline, metrics, load shedding, fault injection), but no
HTTP/2, no sockets and no second event loop. A gRPC hop costs about 1.5-2 ms of Python on
this project's machine (docs/PERFORMANCE.md); a local call costs two task switches and the
messages' serialization, kept so that caller and service never share a mutable message.

Every call runs in a task of its own, as grpc.aio runs each RPC: what the service sets in its
context variables (the inbound deadline, the request's priority) stays out of the caller's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, cast

import grpc
from grpc_health.v1 import health_pb2_grpc
from opentelemetry.trace import SpanKind, Status, StatusCode

from mesh.deadlines import DetailsClientInterceptor
from mesh.server import MeshService, RunningService, application_interceptors, start_service
from mesh.settings import MeshSettings
from mesh.telemetry import tracer

log = logging.getLogger(__name__)
_tracer = tracer(__name__)

# Responses a stream's service may produce ahead of its caller (HTTP/2's flow-control window
# plays this part over the network).
_STREAM_BUFFER = 64
_END = object()

# address -> the local server hosting the service known by it, in this process.
_hosted: dict[str, LocalServer] = {}


def server_at(target: str) -> LocalServer | None:
    """The service this process hosts at ``target``, if it hosts one there."""
    return _hosted.get(target)


class _CallDetails(NamedTuple):
    method: str
    invocation_metadata: tuple[tuple[str, str | bytes], ...]


class LocalServer:
    """Collects a service's method handlers as a grpc.aio.Server does (the generated
    ``add_*Servicer_to_server`` functions register into it), for calls in process."""

    def __init__(self, interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> None:
        self._interceptors = list(interceptors)
        self._registered: dict[str, grpc.RpcMethodHandler] = {}
        self._generic: list[grpc.GenericRpcHandler] = []
        # method -> its handler with the interceptors applied (they depend on the method only).
        self._resolved: dict[str, grpc.RpcMethodHandler | None] = {}

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]) -> None:
        for name, handler in handlers.items():
            self._registered[f"/{service}/{name}"] = handler

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(handlers)

    async def handler(self, method: str) -> grpc.RpcMethodHandler | None:
        if method not in self._resolved:

            async def base(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
                found = self._registered.get(details.method)
                for generic in self._generic if found is None else ():
                    found = generic.service(details)
                    if found is not None:
                        break
                return found

            continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]] = base
            for interceptor in reversed(self._interceptors):
                continuation = functools.partial(interceptor.intercept_service, continuation)
            self._resolved[method] = await continuation(cast(grpc.HandlerCallDetails, _CallDetails(method, ())))
        return self._resolved[method]


class _Aborted(grpc.aio.AbortError):
    """What ``context.abort`` raises, as grpc.aio's does (services may catch AbortError)."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: Sequence[tuple[str, Any]]) -> None:
        super().__init__(details)
        self.code, self.details, self.trailing_metadata = code, details, tuple(trailing_metadata)


class LocalContext:
    """The part of grpc.aio.ServicerContext that services and interceptors use."""

    def __init__(self, metadata: tuple[tuple[str, str | bytes], ...], timeout_s: float | None) -> None:
        self._metadata = metadata
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._code: grpc.StatusCode | None = None
        self._details = ""

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(self._deadline - time.monotonic(), 0.0)

    def peer(self) -> str:
        return "local:in-process"

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def details(self) -> str:
        return self._details

    def set_details(self, details: str) -> None:
        self._details = details

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Sequence[tuple[str, Any]] = ()
    ) -> None:
        self._code = code
        raise _Aborted(code, details, trailing_metadata)

    async def abort_with_status(self, status: grpc.Status) -> None:
        await self.abort(status.code, status.details, status.trailing_metadata)


def _rpc_error(code: grpc.StatusCode, details: str, trailing: Sequence[tuple[str, Any]] = ()) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details)


def _as_rpc_error(error: Exception, method: str, context: LocalContext) -> grpc.aio.AioRpcError:
    """What the caller sees of a handler's failure, as it would over the network."""
    if isinstance(error, _Aborted):
        return _rpc_error(error.code, error.details, error.trailing_metadata)
    if isinstance(error, TimeoutError) and context.time_remaining() == 0:
        return _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    log.error("unexpected error in %s", method, exc_info=error)
    return _rpc_error(grpc.StatusCode.UNKNOWN, f"Unexpected {type(error).__name__}: {error}")


def _copy(message: Any, serializer: Callable[[Any], bytes] | None, deserializer: Callable[[bytes], Any] | None) -> Any:
    if serializer is None or deserializer is None:
        return message
    return deserializer(serializer(message))


class _Invocation:
    """One call: its method, handler, context and span (run in the call's own task)."""

    def __init__(self, server: LocalServer, method: str, details: grpc.aio.ClientCallDetails) -> None:
        self.server = server
        self.method = method
        self.context = LocalContext(tuple(details.metadata or ()), details.timeout)
        self.timeout_s = details.timeout

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[grpc.RpcMethodHandler]:
        service, _, name = self.method.lstrip("/").partition("/")
        attributes = {"rpc.system": "local", "rpc.service": service, "rpc.method": name}
        with _tracer.start_as_current_span(
            self.method.lstrip("/"), kind=SpanKind.CLIENT, attributes=attributes, record_exception=False
        ) as span:
            try:
                handler = await self.server.handler(self.method)
                if handler is None:
                    raise _Aborted(grpc.StatusCode.UNIMPLEMENTED, "Method not found!", ())
                async with asyncio.timeout(self.timeout_s):
                    yield handler
            except Exception as error:
                failure = _as_rpc_error(error, self.method, self.context)
                span.set_attribute("rpc.grpc.status_code", failure.code().value[0])
                span.set_status(Status(StatusCode.ERROR, failure.details()))
                raise failure from None


class _Call:
    """A call is the task that runs it: cancelling the call cancels the task."""

    _task: asyncio.Future[Any]

    def cancel(self) -> bool:
        return self._task.cancel()

    def done(self) -> bool:
        return self._task.done()

    def cancelled(self) -> bool:
        return self._task.cancelled()


class _UnaryCall(_Call):
    def __init__(self, task: asyncio.Future[Any]) -> None:
        self._task = task

    def __await__(self) -> Any:
        return self._task.__await__()


class _StreamCall(_Call):
    """A call with a response stream: the service runs ahead in its task, a bounded buffer
    between it and the caller; cancelling the call (or closing its iterator) cancels it."""

    def __init__(self, produce: Callable[[asyncio.Queue[Any]], Awaitable[None]]) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue(_STREAM_BUFFER)
        self._task = asyncio.ensure_future(produce(self._queue))

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._responses()

    async def _responses(self) -> AsyncIterator[Any]:
        try:
            while (item := await self._queue.get()) is not _END:
                if isinstance(item, grpc.aio.AioRpcError):
                    raise item
                yield item
        finally:
            self._task.cancel()


class LocalChannel:
    """A channel to a service hosted in this process; the generated stubs use it as they use a
    grpc.aio.Channel. ``interceptors`` are the client interceptors that set a call's details
    (its deadline and the metadata it carries), applied as on a network channel."""

    def __init__(self, server: LocalServer, interceptors: Sequence[DetailsClientInterceptor] = ()) -> None:
        self.server = server
        self.interceptors = list(interceptors)

    def _details(
        self, method: str, timeout: float | None, metadata: Any, streaming: bool = False
    ) -> grpc.aio.ClientCallDetails:
        if isinstance(metadata, Mapping):
            metadata = tuple(metadata.items())
        details = grpc.aio.ClientCallDetails(method, timeout, tuple(metadata or ()), None, None)
        for interceptor in self.interceptors:
            details = interceptor._stream_details(details) if streaming else interceptor._details(details)
        return details

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> Callable[..., _UnaryCall]:
        async def invoke(request: Any, details: grpc.aio.ClientCallDetails) -> Any:
            call = _Invocation(self.server, method, details)
            async with call.running() as handler:
                response = await handler.unary_unary(
                    _copy(request, request_serializer, handler.request_deserializer), call.context
                )
            return _copy(response, handler.response_serializer, response_deserializer)

        def multicallable(request: Any, *, timeout: float | None = None, metadata: Any = None, **_: Any) -> _UnaryCall:
            return _UnaryCall(asyncio.ensure_future(invoke(request, self._details(method, timeout, metadata))))

        return multicallable

    def _streaming(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None,
        response_deserializer: Callable[[bytes], Any] | None,
        request_streaming: bool,
    ) -> Callable[..., _StreamCall]:
        async def requests(
            source: AsyncIterator[Any], deserializer: Callable[[bytes], Any] | None
        ) -> AsyncIterator[Any]:
            async for request in source:
                yield _copy(request, request_serializer, deserializer)

        async def produce(request: Any, details: grpc.aio.ClientCallDetails, queue: asyncio.Queue[Any]) -> None:
            call = _Invocation(self.server, method, details)
            try:
                async with call.running() as handler:
                    behavior = handler.stream_stream if request_streaming else handler.unary_stream
                    inbound = (
                        requests(request, handler.request_deserializer)
                        if request_streaming
                        else _copy(request, request_serializer, handler.request_deserializer)
                    )
                    async with contextlib.aclosing(behavior(inbound, call.context)) as responses:
                        async for response in responses:
                            await queue.put(_copy(response, handler.response_serializer, response_deserializer))
            except grpc.aio.AioRpcError as failure:
                await queue.put(failure)
                return
            await queue.put(_END)

        def multicallable(request: Any, *, timeout: float | None = None, metadata: Any = None, **_: Any) -> _StreamCall:
            details = self._details(method, timeout, metadata, streaming=True)
            return _StreamCall(functools.partial(produce, request, details))

        return multicallable

    def unary_stream(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> Callable[..., _StreamCall]:
        return self._streaming(method, request_serializer, response_deserializer, request_streaming=False)

    def stream_stream(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> Callable[..., _StreamCall]:
        return self._streaming(method, request_serializer, response_deserializer, request_streaming=True)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Callable[..., Any]:
        raise NotImplementedError("no llmesh service has a client-streaming method with a unary answer")

    async def close(self, grace: float | None = None) -> None:
        """Nothing to close: the service belongs to the process, which closes it."""

    async def channel_ready(self) -> None:
        """Always ready: the service is in this process."""

    async def __aenter__(self) -> LocalChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class HostedService:
    """A service run inside another process (co-located): served on its own gRPC address for
    every other caller, and called in process by this process's channels to that address. Run
    and drained with that process's own servers (it is a mesh.server.Companion)."""

    def __init__(self, service: MeshService, running: RunningService, addr: str) -> None:
        self.service = service
        self.running = running
        # The address it serves and is known by (the bound port when ``start`` was given port 0).
        self.addr = addr
        self._drained = asyncio.Event()

    @classmethod
    async def start(cls, service: MeshService, settings: MeshSettings, addr: str) -> HostedService:
        running = await start_service(service, settings, addr)
        local = LocalServer(application_interceptors(settings))
        # The generated registration functions call only what LocalServer has of a server.
        service.register(cast(grpc.aio.Server, local))
        health_pb2_grpc.add_HealthServicer_to_server(running.health.servicer, local)
        bound = f"{addr.rpartition(':')[0]}:{running.port}"
        _hosted[bound] = local
        log.info("hosting in process", extra={"service": settings.service_name, "addr": bound})
        return cls(service, running, bound)

    async def run(self) -> None:
        await self._drained.wait()

    async def drain(self, grace_s: float) -> None:
        await self.running.stop(grace_s)
        self._drained.set()

    async def close(self) -> None:
        """After the process's own edges have drained: they may call this service until then."""
        _hosted.pop(self.addr, None)
        await self.service.close()
