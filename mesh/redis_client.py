"""The one way to build a Redis client, so that no process can hang on a Redis that is away.

Every long-lived client has connect and read timeouts (a hung Redis costs a request about a
second, not forever), checks a pooled connection that has been idle before using it again, and
retries a command once on a fresh connection after a timeout or a broken connection (what a
restarted Redis leaves in the pool), so clients recover by themselves once Redis is back.

An async client also has a circuit breaker: once a command found Redis away, the client's next
commands fail at once with ``CircuitOpen`` (a ``ConnectionError``) for ``redis_breaker_open_s``,
then one command at a time is let through as a probe; the first command Redis answers closes it.
So a hung Redis makes one caller wait out the timeouts, and the others get their clear error
at once, instead of each waiting a second or two.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline as AsyncPipeline
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
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


class CircuitOpen(RedisConnectionError):
    """Refused without asking Redis: a command found it away a moment ago."""


class CircuitBreaker:
    """Closed (every command goes to Redis) until a command fails for want of Redis; then open
    for ``open_s`` since the last such failure (every command refused), then half-open (one
    command at a time goes through as a probe, the others are refused). Any command Redis
    answers, even with an error reply, closes it again. No locks: it runs on one event loop."""

    def __init__(self, open_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.open_s = open_s
        self._clock = clock
        self._failed_at: float | None = None  # None: closed
        self._probing = False

    @property
    def closed(self) -> bool:
        return self._failed_at is None

    @contextmanager
    def call(self) -> Iterator[None]:
        """Around one command: raises CircuitOpen instead of running it, or records its outcome."""
        probe = self._admit()
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError):
            self._failed_at = self._clock()
            raise
        except ResponseError:
            self._failed_at = None  # an error reply: Redis is there
            raise
        else:
            self._failed_at = None
        finally:
            # A probe cancelled, or failed otherwise, says nothing about Redis: the next command probes.
            if probe:
                self._probing = False

    def _admit(self) -> bool:
        """Whether the command is the probe; raises CircuitOpen if it may not run."""
        if self._failed_at is None:
            return False
        waited = self._clock() - self._failed_at
        if waited < self.open_s or self._probing:
            raise CircuitOpen(f"Redis did not answer {waited:.1f} s ago; not asked again yet")
        self._probing = True
        return True


class _BreakerPipeline(AsyncPipeline):
    breaker: CircuitBreaker

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        with self.breaker.call():
            return await super().execute(raise_on_error)


class BreakerRedis(aioredis.Redis):
    """A redis.asyncio client whose commands and pipelines go through its ``breaker``."""

    breaker: CircuitBreaker

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        with self.breaker.call():
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> AsyncPipeline:
        pipe = _BreakerPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.breaker = self.breaker
        return pipe


def async_redis(settings: MeshSettings, url: str | None = None, *, decode_responses: bool = False) -> BreakerRedis:
    """A redis.asyncio client of ``url`` (default ``settings.redis_url``), with its own breaker."""
    client = BreakerRedis.from_url(
        url or settings.redis_url,
        decode_responses=decode_responses,
        retry=AsyncRetry(_BACKOFF, settings.redis_retries),
        **_options(settings),
    )
    assert isinstance(client, BreakerRedis)  # from_url builds its class
    client.breaker = CircuitBreaker(settings.redis_breaker_open_s)
    return client


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
