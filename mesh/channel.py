"""The one way to build a gRPC channel."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from mesh import local
from mesh.deadlines import DetailsClientInterceptor
from mesh.deadlines import client_interceptors as deadline_interceptors
from mesh.faults import client_interceptors as fault_interceptors
from mesh.replicas import DnsReplicaChannel, Replica, ReplicaChannel, Resolver, dns_target, system_resolver
from mesh.routing import client_interceptors as assignment_interceptors
from mesh.server import transport_options
from mesh.settings import MeshSettings
from mesh.shedding import client_interceptors as priority_interceptors


def service_config(settings: MeshSettings) -> str:
    """Retries live in the service config, and only for UNAVAILABLE: the call never reached
    a server that could have acted on it, so repeating it is safe for every method.

    Retry throttling is the budget: each failed call takes a token, each successful one gives
    back ``retry_budget_token_ratio``, and retries stop while fewer than half the tokens are left.
    With an upstream that is down, at most about ``retry_budget_max_tokens / 2`` retries are
    made in all, so retries never multiply the load on it (tools/chaos measures the ratio)."""
    retry_policy = {
        "maxAttempts": settings.retry_max_attempts,
        "initialBackoff": "0.05s",
        "maxBackoff": "1s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    # One attempt is no retries: gRPC refuses a retry policy of fewer than two attempts.
    method_config = {"name": [{}], **({"retryPolicy": retry_policy} if settings.retry_max_attempts > 1 else {})}
    throttling = {"maxTokens": settings.retry_budget_max_tokens, "tokenRatio": settings.retry_budget_token_ratio}
    return json.dumps({"retryThrottling": throttling, "methodConfig": [method_config]})


def build_channel(
    target: str, settings: MeshSettings, resolver: Resolver = system_resolver
) -> grpc.aio.Channel | ReplicaChannel | local.LocalChannel:
    """An aio channel with deadlines, trace-context propagation, retries and transport limits,
    over mutual TLS when ``settings.tls_enabled``; for a target naming several replicas
    (``HOST:PORT,HOST:PORT``, or ``dns:///HOST:PORT`` for the addresses ``resolver`` finds for
    HOST), one such channel per replica behind a balancer (mesh.replicas); for a service this
    process hosts (co-located, mesh.local), calls in process."""
    hosted = local.server_at(target)
    if hosted is not None:
        # One of each (the network channel has one per call kind); they only set call details.
        one_each = [
            interceptor
            for interceptor in _details_interceptors(settings)
            if isinstance(interceptor, DetailsClientInterceptor)
            and isinstance(interceptor, grpc.aio.UnaryUnaryClientInterceptor)
        ]
        return local.LocalChannel(hosted, one_each)
    named = dns_target(target)
    if named is not None:
        host, port = named
        return DnsReplicaChannel(
            host, port, lambda one, authority: _channel(one, settings, authority), settings, resolver
        )
    targets = [part.strip() for part in target.split(",") if part.strip()]
    if len(targets) > 1:
        return ReplicaChannel([Replica(one, _channel(one, settings)) for one in targets], settings)
    return _channel(target, settings)


def _channel(target: str, settings: MeshSettings, authority: str = "") -> grpc.aio.Channel:
    """``authority``: the HOST:PORT a channel to an IP address stands for (a pod of a headless
    Service), sent as :authority."""
    options = [
        *transport_options(settings),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config(settings)),
        # A restarted upstream is reconnected to within seconds (the default backoff grows to 120 s).
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
    # Deadline first so the tracing interceptor records the effective timeout.
    interceptors = [
        *_details_interceptors(settings),
        *(
            _CancelPropagating(tracing) if isinstance(tracing, grpc.aio.UnaryUnaryClientInterceptor) else tracing
            for tracing in aio_client_interceptors()  # type: ignore[no-untyped-call]  # unannotated
        ),
    ]
    if authority:
        # gRPC checks the server's certificate against the authority's host (unless
        # tls_server_name overrides it), so a pod's certificate for its service's name verifies.
        options.append(("grpc.default_authority", authority))
    if not settings.tls_enabled:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    if settings.tls_server_name:
        options.append(("grpc.ssl_target_name_override", settings.tls_server_name))
    return grpc.aio.secure_channel(target, channel_credentials(settings), options=options, interceptors=interceptors)


class _CancelPropagating(grpc.aio.UnaryUnaryClientInterceptor):
    """OpenTelemetry's unary interceptor awaits the call's outcome inside the interceptor, so
    cancelling the caller (a client that left) cancelled only that wait and the RPC ran on to
    its end upstream, Triton's generation included. This cancels the RPC with its caller."""

    def __init__(self, inner: grpc.aio.UnaryUnaryClientInterceptor) -> None:
        self.inner = inner

    async def intercept_unary_unary(self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        started: list[grpc.aio.Call] = []

        async def tracked(details: grpc.aio.ClientCallDetails, request: Any) -> Any:
            call = await continuation(details, request)
            started.append(call)
            return call

        try:
            return await self.inner.intercept_unary_unary(tracked, details, request)
        except asyncio.CancelledError:
            for call in started:
                call.cancel()
            raise


def _details_interceptors(settings: MeshSettings) -> list[grpc.aio.ClientInterceptor]:
    """The interceptors that set a call's deadline and the metadata it carries."""
    return [
        *deadline_interceptors(settings.default_deadline_s, settings.stream_deadline_s),
        *assignment_interceptors(),
        *priority_interceptors(settings.request_priority),
        *fault_interceptors(),
    ]


def channel_credentials(settings: MeshSettings) -> grpc.ChannelCredentials:
    """Mutual TLS: trust only the mesh CA, and present this process's certificate."""
    ca, cert, key = settings.tls_material()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
