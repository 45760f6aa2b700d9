"""Readiness of the gateway: every upstream SERVING and Redis answering PING.

Used by both /readyz and the gRPC edge's grpc.health.v1 status, so the two always agree. Redis
is always checked and reported, with the reason when it does not answer; whether its absence
takes the gateway out of load balancing depends on whether the gateway can still serve without
it: with rate limits failing open it can (API keys it verified recently, no limits), so it
stays ready, degraded; failing closed it cannot (every request would be refused), so it is not.
"""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.exceptions import RedisError

from gateway.settings import GatewaySettings
from mesh.redis_client import async_redis

SERVING = health_pb2.HealthCheckResponse.ServingStatus.Name(health_pb2.HealthCheckResponse.SERVING)


INFERENCE_SERVICE = "llmesh.inference.v1.InferenceService"


async def check(settings: GatewaySettings, channels: dict[str, grpc.aio.Channel]) -> dict[str, str]:
    """Each dependency's status: ``SERVING`` when usable, else what went wrong; while the
    inference service is not serving, also each model's (``model:<name>``: still loading?)."""
    names = [*channels, "redis"]
    timeout = settings.readiness_timeout_s
    statuses = dict(
        zip(
            names,
            await asyncio.gather(
                *(_grpc_health(channel, timeout) for channel in channels.values()),
                _redis_ping(settings),
            ),
            strict=True,
        )
    )
    if statuses.get("inference") == "NOT_SERVING":
        models = [model.name for model in settings.models]
        per_model = await asyncio.gather(
            *(_grpc_health(channels["inference"], timeout, f"{INFERENCE_SERVICE}/{name}") for name in models)
        )
        for name, status in zip(models, per_model, strict=True):
            statuses[f"model:{name}"] = "loading" if status == "NOT_SERVING" else status
    return statuses


def is_ready(statuses: dict[str, str]) -> bool:
    """Whether every dependency is usable (what a batch worker needs before taking work)."""
    return all(status == SERVING for status in statuses.values())


def serves(statuses: dict[str, str], settings: GatewaySettings) -> bool:
    """Whether the edges can serve requests: every upstream usable, and Redis too unless rate
    limits fail open."""
    return all(
        status == SERVING for name, status in statuses.items() if name != "redis" or not settings.rate_limits_fail_open
    )


async def _grpc_health(channel: grpc.aio.Channel, timeout_s: float, service: str = "") -> str:
    try:
        request = health_pb2.HealthCheckRequest(service=service)
        response = await health_pb2_grpc.HealthStub(channel).Check(request, timeout=timeout_s)
    except grpc.aio.AioRpcError as error:
        return error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


async def _redis_ping(settings: GatewaySettings) -> str:
    # A connection per probe: a probe every few seconds is cheap next to managing one
    # client's lifetime across both edges. No retry: a probe reports what it finds.
    timeout = settings.readiness_timeout_s
    probe_settings = settings.model_copy(
        update={"redis_connect_timeout_s": timeout, "redis_socket_timeout_s": timeout, "redis_retries": 0}
    )
    client = async_redis(probe_settings)
    try:
        await client.ping()
    except (RedisError, OSError) as error:
        return f"{type(error).__name__}: {error}"
    finally:
        await client.aclose()
    return SERVING
