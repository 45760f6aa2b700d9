"""The one way to build a Redis client, so that no process can hang on a Redis that is away.

Every long-lived client has connect and read timeouts (a hung Redis costs a request about a
second, not forever), checks a pooled connection that has been idle before using it again, and
retries a command once on a fresh connection after a timeout or a broken connection (what a
restarted Redis leaves in the pool), so clients recover by themselves once Redis is back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from mesh.settings import MeshSettings

# Short: a retry is for a connection the restart of Redis broke, not for a Redis still down.
_BACKOFF = ExponentialWithJitterBackoff(base=0.05, cap=0.5)
_RETRY_ON = [RedisConnectionError, RedisTimeoutError]


def _options(settings: MeshSettings) -> dict[str, Any]:
    return {
        "socket_connect_timeout": settings.redis_connect_timeout_s,
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_keepalive": True,
        "health_check_interval": settings.redis_health_check_interval_s,
        "retry_on_error": _RETRY_ON,
    }


def async_redis(settings: MeshSettings, url: str | None = None, *, decode_responses: bool = False) -> aioredis.Redis:
    """A redis.asyncio client of ``url`` (default ``settings.redis_url``)."""
    return aioredis.Redis.from_url(
        url or settings.redis_url,
        decode_responses=decode_responses,
        retry=AsyncRetry(_BACKOFF, settings.redis_retries),
        **_options(settings),
    )


def sync_redis(settings: MeshSettings, url: str | None = None, *, decode_responses: bool = False) -> redis.Redis:
    """A blocking client, for processes or threads without an event loop."""
    return redis.Redis.from_url(
        url or settings.redis_url,
        decode_responses=decode_responses,
        retry=Retry(_BACKOFF, settings.redis_retries),
        **_options(settings),
    )


# redis-py types every reply as bytes | str (or a union of a command's reply shapes), whatever
# the client; these read one as text, from a client built with decode_responses=True (str
# already) or without it (UTF-8 bytes).
def decoded(reply: object) -> str:
    if isinstance(reply, bytes):
        return reply.decode()
    if isinstance(reply, str):
        return reply
    raise TypeError(f"expected a text reply from Redis, not {type(reply).__name__}")


def decoded_all(replies: Iterable[object]) -> list[str]:
    return [decoded(reply) for reply in replies]


def decoded_fields(reply: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    """A hash (HGETALL) as text."""
    return {decoded(field): decoded(value) for field, value in reply.items()}


def binary(reply: object) -> bytes:
    """A reply that is data, not text (a vector), from a client built without decode_responses."""
    if isinstance(reply, bytes):
        return reply
    raise TypeError(f"expected a bytes reply from Redis, not {type(reply).__name__}")
