"""Traffic splits between the Triton versions of a model (docs/RESILIENCE.md, "Model versions").

A split says which share of a model's requests each of its versions gets, and which version a
rollback returns to. It lives in Redis, so that every inference replica applies the same one;
each replica reads every split in the background every ``refresh_s`` seconds (a request never
waits on Redis), and keeps the last one it read while Redis is away.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from mesh.redis_client import decoded

log = logging.getLogger(__name__)

SPLIT_KEY_PREFIX = "llmesh:model-split:"


def split_key(model: str) -> str:
    return SPLIT_KEY_PREFIX + model


class SplitError(ValueError):
    """A split that cannot be applied (the message says why)."""


@dataclass(frozen=True)
class Split:
    """Percent of a model's requests per version (only versions with traffic are kept), and the
    stable version: the one a rollback sends everything back to."""

    percent: dict[int, int]
    stable: int

    @classmethod
    def of(cls, percent: dict[int, int], stable: int) -> Split:
        if any(version < 1 for version in percent):
            raise SplitError(f"versions are positive integers, got {sorted(percent)}")
        if any(not 0 <= share <= 100 for share in percent.values()):
            raise SplitError(f"each percent must be within 0..100, got {percent}")
        if sum(percent.values()) != 100:
            raise SplitError(f"the percents must add up to 100, not {sum(percent.values())}")
        return cls({version: share for version, share in sorted(percent.items()) if share}, stable)

    @classmethod
    def parse(cls, raw: str) -> Split:
        data = json.loads(raw)
        return cls.of({int(version): int(share) for version, share in data["percent"].items()}, int(data["stable"]))

    def dumps(self) -> str:
        return json.dumps({"percent": {str(v): share for v, share in self.percent.items()}, "stable": self.stable})

    def pick(self, draw: float) -> int:
        """The version for a request, ``draw`` uniform in [0, 1)."""
        versions = list(self.percent)
        bounds = list(itertools.accumulate(self.percent.values()))
        return versions[min(bisect.bisect_right(bounds, draw * 100), len(versions) - 1)]

    def order(self, draw: float) -> list[int]:
        """The versions to try for a request: the one picked, then the others with traffic, the
        most first, then the stable one (a request fails over only before its first chunk)."""
        picked = self.pick(draw)
        others = sorted((v for v in self.percent if v != picked), key=lambda v: -self.percent[v])
        return list(dict.fromkeys([picked, *others, self.stable]))

    def shifted(self, percent: dict[int, int]) -> Split:
        return Split.of(percent, self.stable)

    def rolled_back(self) -> Split:
        return Split.of({self.stable: 100}, self.stable)


class TrafficSplits:
    """This replica's view of every model's split, read from Redis in the background."""

    def __init__(
        self,
        redis: aioredis.Redis,
        models: Sequence[str],
        refresh_s: float,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.redis = redis
        self.models = list(models)
        self.refresh_s = refresh_s
        self.draw = draw
        self.splits: dict[str, Split] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._failing = False

    def start(self) -> None:
        """Starts the background reads (idempotent; needs a running event loop)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    def versions(self, model: str) -> list[int | None]:
        """The versions to try for one request, in order, ending with None: Triton's own choice
        of version (its version policy's highest ready one), all there is while the model has no
        split, and what still answers when the split names versions Triton no longer has (a
        Triton restarted after a roll-forward loads the versions of its config.pbtxt)."""
        split = self.splits.get(model)
        return [None] if split is None else [*split.order(self.draw()), None]

    @property
    def propagation_s(self) -> float:
        """How long after a write every replica reading Redis applies it: a replica may have read
        just before the write, and its next read takes up to another interval to land."""
        return 2 * self.refresh_s + 0.1

    async def refresh(self) -> None:
        """Reads every split once; on a Redis error keeps the last ones read."""
        try:
            raws = await self.redis.mget([split_key(model) for model in self.models])
        except RedisError as error:
            if not self._failing:
                log.warning("model splits not read; keeping the last ones", extra={"error": str(error)})
            self._failing = True
            return
        if self._failing:
            log.info("model splits read again")
        self._failing = False
        splits = {}
        for model, raw in zip(self.models, raws, strict=True):
            if raw is None:
                continue
            try:
                splits[model] = Split.parse(decoded(raw))
            except (ValueError, KeyError) as error:
                log.warning("ignoring a malformed model split", extra={"model": model, "error": str(error)})
        self.splits = splits

    async def read(self, model: str) -> Split | None:
        """The split as stored now (raises RedisError): what a lifecycle change starts from."""
        raw = await self.redis.get(split_key(model))
        return None if raw is None else Split.parse(decoded(raw))

    async def write(self, model: str, split: Split) -> None:
        """Stores ``split`` (raises RedisError) and applies it on this replica at once."""
        await self.redis.set(split_key(model), split.dumps())
        self.splits = {**self.splits, model: split}

    async def _run(self) -> None:
        while not self._closing:
            await self.refresh()
            await asyncio.sleep(self.refresh_s)

    async def close(self) -> None:
        # The flag as well as the cancel: a cancel that lands inside a Redis call can come back
        # as a RedisError (redis-py's timeouts), which refresh() absorbs, and the loop went on.
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.redis.aclose()
