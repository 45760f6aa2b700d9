"""Readiness of the gateway: every upstream SERVING and Redis answering PING.

Used by both /readyz and the gRPC edge's grpc.health.v1 status, so the two always agree.
"""

from __future__ import annotations

import asyncio

import grpc
import redis.asyncio as redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.exceptions import RedisError

from gateway.settings import GatewaySettings

SERVING = health_pb2.HealthCheckResponse.ServingStatus.Name(health_pb2.HealthCheckResponse.SERVING)


async def check(settings: GatewaySettings, channels: dict[str, grpc.aio.Channel]) -> dict[str, str]:
    """Each dependency's status: ``SERVING`` when usable, else what went wrong."""
    names = [*channels, "redis"]
    statuses = await asyncio.gather(
        *(_grpc_health(channel, settings.readiness_timeout_s) for channel in channels.values()),
        _redis_ping(settings.redis_url, settings.readiness_timeout_s),
    )
    return dict(zip(names, statuses, strict=True))


def is_ready(statuses: dict[str, str]) -> bool:
    return all(status == SERVING for status in statuses.values())


async def _grpc_health(channel: grpc.aio.Channel, timeout_s: float) -> str:
    try:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
    except grpc.aio.AioRpcError as error:
        return error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


async def _redis_ping(url: str, timeout_s: float) -> str:
    # A connection per probe: the gateway keeps no Redis client yet, and a probe every few
    # seconds is cheap next to managing one's lifetime across both edges.
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        await client.ping()
    except (RedisError, OSError) as error:
        return f"{type(error).__name__}: {error}"
    finally:
        await client.aclose()
    return SERVING
