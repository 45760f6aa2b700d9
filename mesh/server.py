"""The one way to build and run a gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from prometheus_client import start_http_server

from mesh.deadlines import Behavior, Context, DeadlineServerInterceptor, wrap_handler
from mesh.errors import abort
from mesh.faults import FaultServerInterceptor
from mesh.logging import setup_logging
from mesh.metrics import MetricsServerInterceptor
from mesh.settings import MeshSettings
from mesh.shedding import SheddingServerInterceptor
from mesh.telemetry import setup_tracing

log = logging.getLogger(__name__)

# Ready or not, or ready or not per component (see Health.watch).
ReadinessCheck = Callable[[], Awaitable[bool | Mapping[str, bool]]]


def transport_options(settings: MeshSettings) -> list[tuple[str, int]]:
    """Options shared by servers and channels so both ends agree on limits and keepalive."""
    return [
        ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
        ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
        ("grpc.keepalive_time_ms", settings.grpc_keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", settings.grpc_keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        # Let clients ping as often as their keepalive asks for without being cut off.
        ("grpc.http2.min_ping_interval_without_data_ms", settings.grpc_keepalive_time_ms // 2),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def _written_stream(behavior: Behavior, _request_streaming: bool, response_streaming: bool) -> Behavior:
    """A response stream sent with ``context.write`` by one coroutine instead of returned as an
    async generator. Works around grpc.aio leaving the generator of a call the client cancelled
    suspended at a ``yield``, to be closed later by the event loop's finaliser in another task:
    OpenTelemetry's server interceptor then fails to detach the span's context and logs
    "Failed to detach context" with a traceback. Closed here, it unwinds in its own task."""
    if not response_streaming:
        return behavior

    async def written(request: Any, context: Context) -> None:
        async with contextlib.aclosing(behavior(request, context)) as responses:
            async for response in responses:
                await context.write(response)

    return written


class _StreamClosingInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        return wrap_handler(await continuation(handler_call_details), _written_stream)


class _Undecodable:
    """What a request that does not parse (invalid UTF-8 in a string field, truncated bytes)
    becomes, so that the handler can answer INVALID_ARGUMENT: grpc.aio would answer UNKNOWN
    and log the DecodeError's traceback at ERROR."""

    def __init__(self, error: DecodeError) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as error:
            return _Undecodable(error)

    return deserialize


async def _refuse_undecodable(context: Context, request: _Undecodable) -> None:
    message = f"the request could not be parsed: {request.error}"
    await abort(context, grpc.StatusCode.INVALID_ARGUMENT, message, "MALFORMED_REQUEST")


def _checking_requests(behavior: Behavior, request_streaming: bool, response_streaming: bool) -> Behavior:
    async def checked_iterator(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        async for request in requests:
            if isinstance(request, _Undecodable):
                await _refuse_undecodable(context, request)
            yield request

    if request_streaming:
        if response_streaming:

            async def stream_stream(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
                async with contextlib.aclosing(behavior(checked_iterator(requests, context), context)) as responses:
                    async for response in responses:
                        yield response

            return stream_stream

        async def stream_unary(requests: AsyncIterator[Any], context: Context) -> Any:
            return await behavior(checked_iterator(requests, context), context)

        return stream_unary
    if response_streaming:

        async def unary_stream(request: Any, context: Context) -> AsyncIterator[Any]:
            if isinstance(request, _Undecodable):
                await _refuse_undecodable(context, request)
            async with contextlib.aclosing(behavior(request, context)) as responses:
                async for response in responses:
                    yield response

        return unary_stream

    async def unary_unary(request: Any, context: Context) -> Any:
        if isinstance(request, _Undecodable):
            await _refuse_undecodable(context, request)
        return await behavior(request, context)

    return unary_unary


class _MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = wrap_handler(await continuation(handler_call_details), _checking_requests)
        if handler is None:
            return None
        return handler._replace(request_deserializer=_tolerant(handler.request_deserializer))


def application_interceptors(settings: MeshSettings) -> list[grpc.aio.ServerInterceptor]:
    """What every call to a service goes through, over the network or in process (mesh.local):
    its deadline, its metrics, admission, and injected faults."""
    return [
        DeadlineServerInterceptor(),
        MetricsServerInterceptor(),
        # Inside those two (and the tracing before them): what it refuses is still traced, timed and counted.
        SheddingServerInterceptor(settings.max_concurrent_requests, settings.max_queued_requests),
        # Innermost: an injected delay holds its slot, as a slow handler would.
        *([FaultServerInterceptor(settings)] if settings.fault_injection_enabled else []),
    ]


def create_server(addr: str, settings: MeshSettings, *, mtls: bool = True) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server with tracing, deadline propagation and metrics, bound to ``addr``.

    ``addr`` may use port 0; the bound port is returned. With ``settings.tls_enabled`` it
    accepts only mutual TLS from clients whose certificate the mesh CA signed; ``mtls=False``
    is for a public edge, whose TLS ends at the ingress in front of it.
    """
    server = grpc.aio.server(
        # Outermost first: the stream closer must wrap the tracing interceptor's generator
        # directly, so that closing one closes the other in the same task.
        interceptors=[
            _StreamClosingInterceptor(),
            aio_server_interceptor(),  # type: ignore[no-untyped-call]  # the instrumentation leaves it unannotated
            _MalformedRequestInterceptor(),
            *application_interceptors(settings),
        ],
        options=transport_options(settings),
    )
    if settings.tls_enabled and mtls:
        ca, cert, key = settings.tls_material()
        credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
        port = server.add_secure_port(addr, credentials)
    else:
        port = server.add_insecure_port(addr)
    if port == 0:
        raise OSError(f"could not bind gRPC server to {addr}")
    return server, port


def listen_addr(settings: MeshSettings, own_addr: str) -> str:
    return settings.listen_addr or own_addr


class Health:
    """The standard grpc.health.v1 service, with status set from real readiness checks."""

    def __init__(self, server: grpc.aio.Server, service_names: Sequence[str]) -> None:
        # The empty name is the whole server's health, as probes ask for it.
        self.service_names = ["", *service_names]
        self.servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)
        reflection.enable_server_reflection(
            [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            server,
        )
        self.serving = False

    async def set(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self.service_names:
            await self.servicer.set(name, status)
        if serving != self.serving:
            log.info("health changed", extra={"serving": serving})
        self.serving = serving

    async def set_components(self, components: Mapping[str, bool]) -> None:
        """One health entry per component, ``<service>/<component>`` (e.g. a model of the
        inference service), so that a caller can tell which part is not ready yet."""
        for component, ready in components.items():
            status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
            await self.servicer.set(f"{self.service_names[1]}/{component}", status)

    async def watch(self, check: ReadinessCheck, interval_s: float = 2.0) -> None:
        """Re-check readiness for as long as the server runs; a failing check means NOT_SERVING.

        A check returns whether the service is ready, or whether each of its components is: the
        service is ready once all have been (an engine still loading at start takes no traffic),
        and from then on while any is. One component going away (a model unloaded from Triton)
        leaves the others serving, and callers fail over from it; readiness pulling every
        replica at once for it (k8s) would fail them all, and everything that needs them.
        """
        started = False
        while True:
            try:
                result = await check()
            except Exception as error:  # any failure of a dependency means not ready
                if self.serving:
                    log.warning("readiness check failed", exc_info=True)
                else:
                    log.debug("not ready yet: %s", error)
                result = False
            if isinstance(result, Mapping):
                await self.set_components(result)
                ready = any(result.values()) if started else all(result.values())
                started = started or ready
            else:
                ready = bool(result)
            await self.set(ready)
            await asyncio.sleep(interval_s if ready else min(interval_s, 0.5))

    async def shutdown(self) -> None:
        await self.set(False)
        await self.servicer.enter_graceful_shutdown()


class Companion(Protocol):
    """Another edge of the same process (the gateway's REST server), run and drained with the
    gRPC server."""

    async def run(self) -> None:
        """Serve until drained, and return once what was in flight has finished; returning
        early (it could not bind, say) stops the process."""

    async def drain(self, grace_s: float) -> None:
        """Stop taking new work; what is in flight has ``grace_s`` to finish."""


async def drain(
    server: grpc.aio.Server,
    health_: Health,
    grace_s: float | None,
    notice_s: float = 0.0,
    companions: Sequence[Companion] = (),
    on_draining: Callable[[], None] | None = None,
) -> None:
    """Graceful drain: report NOT_SERVING (and still serve for ``notice_s``, so that load
    balancers stop sending first), then stop taking new calls and finish those in flight,
    streams included, within ``grace_s``; what is left after it is cancelled."""
    await health_.set(False)
    if on_draining is not None:
        on_draining()
    if notice_s:
        await asyncio.sleep(notice_s)
    await health_.servicer.enter_graceful_shutdown()
    await asyncio.gather(server.stop(grace_s), *(companion.drain(grace_s or 0.0) for companion in companions))


async def serve(
    server: grpc.aio.Server,
    health_: Health,
    settings: MeshSettings,
    *,
    readiness: ReadinessCheck,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    companions: Sequence[Companion] = (),
    on_draining: Callable[[], None] | None = None,
) -> None:
    """The one runner of every process: serve until SIGTERM/SIGINT, drain (see ``drain``),
    then close clients with ``on_stop``."""
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.listen_addr.rpartition(":")[0] or "127.0.0.1")
    # The library's servicer answers SERVING until told otherwise; start from NOT_SERVING.
    await health_.set(False)
    await server.start()
    watcher = asyncio.create_task(health_.watch(readiness))
    running = [asyncio.create_task(companion.run()) for companion in companions]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("serving", extra={"service": settings.service_name})
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([stopping, *running], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    log.info("shutting down", extra={"grace_s": settings.shutdown_grace_s, "notice_s": settings.shutdown_notice_s})
    watcher.cancel()
    await drain(server, health_, settings.shutdown_grace_s, settings.shutdown_notice_s, companions, on_draining)
    await asyncio.gather(*running)
    if on_stop is not None:
        await on_stop()
    log.info("stopped")


class MeshService(Protocol):
    """What a service process hands to the mesh: its gRPC servicers and its readiness."""

    # Fully qualified gRPC service names, for health and reflection.
    service_names: Sequence[str]

    def register(self, server: grpc.aio.Server) -> None: ...

    async def ready(self) -> bool | Mapping[str, bool]: ...

    async def close(self) -> None: ...


@dataclass
class RunningService:
    server: grpc.aio.Server
    port: int
    health: Health
    watcher: asyncio.Task[None]

    async def stop(self, grace: float | None = None) -> None:
        self.watcher.cancel()
        await drain(self.server, self.health, grace)


async def start_service(service: MeshService, settings: MeshSettings, addr: str) -> RunningService:
    """Start a service in this event loop (tests use port 0); readiness is watched in the background."""
    server, port = create_server(addr, settings)
    service.register(server)
    health_ = Health(server, service.service_names)
    await health_.set(False)
    await server.start()
    return RunningService(server, port, health_, asyncio.create_task(health_.watch(service.ready)))


# Each service's settings class extends MeshSettings; its constructor takes that class.
SettingsT = TypeVar("SettingsT", bound=MeshSettings)


def run_service(settings: SettingsT, own_addr: str, factory: Callable[[SettingsT], MeshService]) -> None:
    """Entry point of every ``python -m services.<name>``."""
    setup_logging(settings.service_name, settings.log_level)
    provider = setup_tracing(settings)

    async def main() -> None:
        # Built inside the loop: aio channels and clients bind to the running loop.
        service = factory(settings)
        server, _ = create_server(listen_addr(settings, own_addr), settings)
        service.register(server)
        await serve(
            server, Health(server, service.service_names), settings, readiness=service.ready, on_stop=service.close
        )

    try:
        asyncio.run(main())
    finally:
        provider.shutdown()
