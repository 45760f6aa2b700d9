"""Prometheus metrics for every gRPC server, by method and status code."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram

from mesh import semconv
from mesh.deadlines import Behavior, Context, wrap_handler

RPC_DURATION = Histogram(
    semconv.METRIC_RPC_SERVER_DURATION,
    "gRPC server call duration (to the last message for streams)",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RPC_REQUESTS = Counter(semconv.METRIC_RPC_SERVER_REQUESTS, "gRPC server calls", ["method", "code"])
# What the CPU tiers autoscale on (k8s/components/hpa), besides CPU.
RPC_IN_FLIGHT = Gauge(semconv.METRIC_RPC_SERVER_IN_FLIGHT, "gRPC server calls in progress")


def _code_name(context: Context, failed: bool) -> str:
    code = context.code()
    if code is None:
        return "UNKNOWN" if failed else "OK"
    # aio contexts report the code as a grpc.StatusCode or as its integer value.
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    return next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))


class MetricsServerInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method

        def observe(started: float, context: Context, failed: bool) -> None:
            RPC_IN_FLIGHT.dec()
            RPC_DURATION.labels(method).observe(time.perf_counter() - started)
            RPC_REQUESTS.labels(method, _code_name(context, failed)).inc()

        def wrap(behavior: Behavior, _request_streaming: bool, response_streaming: bool) -> Behavior:
            if response_streaming:

                async def stream_behavior(request: Any, context: Context) -> AsyncIterator[Any]:
                    started, failed = time.perf_counter(), True
                    RPC_IN_FLIGHT.inc()
                    try:
                        async for response in behavior(request, context):
                            yield response
                        failed = False
                    finally:
                        observe(started, context, failed)

                return stream_behavior

            async def unary_behavior(request: Any, context: Context) -> Any:
                started, failed = time.perf_counter(), True
                RPC_IN_FLIGHT.inc()
                try:
                    response = await behavior(request, context)
                    failed = False
                    return response
                finally:
                    observe(started, context, failed)

            return unary_behavior

        return wrap_handler(await continuation(handler_call_details), wrap)
