"""Interactive load, as batch workers see it: each gateway replica publishes how many interactive
requests (REST and gRPC generation calls) it had in flight, and batch workers read the sum to
yield to them (gateway/batch/runner.py).

A replica writes the peak since its last write, not the count at that instant, so a request
that started and ended between two writes is still seen. An entry not refreshed for a few
intervals belongs to a replica that has gone; it counts as idle and is removed later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.settings import GatewaySettings
from mesh.redis_client import async_redis, decoded_fields

log = logging.getLogger(__name__)

KEY = "llmesh:interactive:in_flight"  # hash: replica -> "<peak in flight>:<unix ms>"
# Entries older than this many intervals are stale (their replica stopped publishing).
_FRESH_INTERVALS = 5
_FORGET_AFTER_S = 60.0


class InteractiveLoad:
    """One per gateway process, shared by both edges."""

    def __init__(self, settings: GatewaySettings, client: aioredis.Redis | None = None) -> None:
        self.interval_s = settings.interactive_load_interval_s
        self.redis = client or async_redis(settings, decode_responses=True)
        self.replica = f"{socket.gethostname()}:{os.getpid()}"
        self.in_flight = 0
        self._peak = 0
        self._published: int | None = None
        self._task: asyncio.Task | None = None
        self._closing = False

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Counts one interactive request for as long as the block runs."""
        self.in_flight += 1
        self._peak = max(self._peak, self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._publish_forever())

    async def close(self) -> None:
        # The flag too, not only the cancellation: redis-py can swallow a cancellation that
        # lands inside a Redis call.
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(RedisError, OSError):
            await self.redis.hdel(KEY, self.replica)
        await self.redis.aclose()

    async def _publish_forever(self) -> None:
        # Under load every interval; when idle only on a change and once a second, which is
        # enough for readers to tell an idle replica from one that went away.
        heartbeat_every = max(1, round(1.0 / self.interval_s))
        ticks = 0
        while not self._closing:
            peak, self._peak = self._peak, self.in_flight
            if peak or peak != self._published or ticks % heartbeat_every == 0:
                try:
                    await self.redis.hset(KEY, self.replica, f"{peak}:{int(time.time() * 1000)}")
                    self._published = peak
                except (RedisError, OSError):
                    # Batch workers then see no load from here: they run a little faster for
                    # as long as Redis is away, nothing fails.
                    log.debug("could not publish interactive load", exc_info=True)
            ticks += 1
            await asyncio.sleep(self.interval_s)


async def interactive_in_flight(client: aioredis.Redis, interval_s: float) -> int:
    """Interactive requests in flight across every live gateway replica (at their peak over
    the last interval); removes entries of replicas gone for a minute."""
    entries = decoded_fields(await client.hgetall(KEY))
    now_ms = time.time() * 1000
    total = 0
    gone = []
    for replica, value in entries.items():
        peak, _, stamp = value.partition(":")
        age_s = (now_ms - float(stamp or 0)) / 1000
        if age_s <= _FRESH_INTERVALS * max(interval_s, 0.2):
            total += int(peak or 0)
        elif age_s > _FORGET_AFTER_S:
            gone.append(replica)
    if gone:
        await client.hdel(KEY, *gone)
    return total
