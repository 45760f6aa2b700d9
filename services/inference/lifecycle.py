"""Model lifecycle on Triton (explicit model-control mode): load a version beside those serving,
shift traffic to it, roll back, unload. docs/RESILIENCE.md ("Model versions") says why each step
waits for what it waits for; the order is what keeps requests from failing during a swap:

- a version gets traffic only once Triton reports it ready;
- a split is written before a version is loaded, so that no replica lets Triton's version policy
  (highest ready version) send requests to the new version before the operator shifts any;
- before a version is unloaded, every replica has stopped sending it new requests (the split's
  propagation time) and this replica's requests in flight on it have finished; Triton itself
  lets requests in flight on an unloading version finish before the engine stops.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

import grpc
from redis.exceptions import RedisError

from services.inference.triton_client import TritonError
from services.inference.versions import Split, SplitError, TrafficSplits

READY = "READY"
# Triton's states of a version that still holds (or is about to hold) an engine.
_LOADED_STATES = {READY, "LOADING", "UNLOADING"}


class LifecycleError(Exception):
    """A lifecycle call that cannot be done; answered with ``code`` and ErrorInfo ``reason``."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class LifecycleTriton(Protocol):
    async def model_versions(self, name: str) -> dict[int, tuple[str, str]]: ...

    async def model_config(self, name: str) -> dict[str, Any]: ...

    async def load_model(self, name: str, config: dict[str, Any], timeout_s: float) -> None: ...


class ModelLifecycle:
    def __init__(
        self,
        triton: LifecycleTriton,
        splits: TrafficSplits,
        in_flight: Counter[tuple[str, int | None]],
        *,
        load_timeout_s: float,
        drain_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
        poll_s: float = 0.1,
    ) -> None:
        self.triton = triton
        self.splits = splits
        self.in_flight = in_flight
        self.load_timeout_s = load_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.clock = clock
        self.poll_s = poll_s
        # One change at a time per replica: two loads racing would each override the other's policy.
        self._lock = asyncio.Lock()

    async def versions(self, model: str) -> tuple[dict[int, tuple[str, str]], Split | None]:
        """Triton's versions of ``model`` (state, reason) and its stored split."""
        return await self._triton(self.triton.model_versions(model)), await self._stored(model)

    async def load(self, model: str, version: int, model_dir: str = "") -> float:
        """Loads ``version`` beside the ready ones; seconds until Triton reported it ready."""
        if version < 1:
            raise LifecycleError(grpc.StatusCode.INVALID_ARGUMENT, "version must be 1 or more", "INVALID_VERSION")
        async with self._lock:
            started = self.clock()
            states = await self._triton(self.triton.model_versions(model))
            ready = sorted(v for v, (state, _) in states.items() if state == READY)
            if version in ready:
                raise LifecycleError(
                    grpc.StatusCode.ALREADY_EXISTS, f"{model} version {version} is already loaded", "VERSION_LOADED"
                )
            if not ready:
                raise LifecycleError(
                    grpc.StatusCode.FAILED_PRECONDITION, f"{model} has no ready version to serve beside", "NOT_READY"
                )
            split = await self._stored(model)
            if split is None:
                # Pin today's traffic to what serves it now before Triton has a higher version.
                split = Split.of({ready[-1]: 100}, ready[-1])
                await self._write(model, split)
                await asyncio.sleep(self.splits.propagation_s)
            config = await self._triton(self.triton.model_config(model))
            config["version_policy"] = {"specific": {"versions": sorted({*ready, version})}}
            if model_dir:
                config.setdefault("parameters", {})[f"model_dir.v{version}"] = {"string_value": model_dir}
            try:
                await self.triton.load_model(model, config, self.load_timeout_s)
            except TritonError as error:
                raise LifecycleError(grpc.StatusCode.FAILED_PRECONDITION, str(error), "LOAD_FAILED") from None
            states = await self._triton(self.triton.model_versions(model))
            state, why = states.get(version, ("UNAVAILABLE", "not in Triton's repository index"))
            if state != READY:
                raise LifecycleError(
                    grpc.StatusCode.FAILED_PRECONDITION, f"{model} version {version}: {state} {why}", "LOAD_FAILED"
                )
            return self.clock() - started

    async def shift(self, model: str, percent: dict[int, int]) -> Split:
        """Sets the split; every version given traffic must be ready on Triton."""
        async with self._lock:
            split = await self._stored(model)
            states = await self._triton(self.triton.model_versions(model))
            not_ready = [v for v, share in percent.items() if share and states.get(v, ("",))[0] != READY]
            if not_ready:
                raise LifecycleError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"{model}: version(s) {not_ready} are not ready on Triton; load them first",
                    "NOT_READY",
                )
            # Without a split yet, the oldest version given traffic is the one to return to.
            stable = split.stable if split is not None else min((v for v, share in percent.items() if share), default=0)
            try:
                new = Split.of(percent, stable)
            except SplitError as error:
                raise LifecycleError(grpc.StatusCode.INVALID_ARGUMENT, str(error), "INVALID_SPLIT") from None
            await self._write(model, new)
            return new

    async def roll_back(self, model: str) -> tuple[float, float, list[int]]:
        """All traffic to the stable version, then every other version unloaded: (seconds until
        every replica sends all traffic to it, seconds until the others were unloaded, them)."""
        async with self._lock:
            started = self.clock()
            split = await self._stored(model)
            if split is None:
                raise LifecycleError(
                    grpc.StatusCode.FAILED_PRECONDITION, f"{model} has no split to roll back", "NO_SPLIT"
                )
            await self._write(model, split.rolled_back())
            await asyncio.sleep(self.splits.propagation_s)
            traffic_s = self.clock() - started
            states = await self._triton(self.triton.model_versions(model))
            others = sorted(v for v, (state, _) in states.items() if state in _LOADED_STATES and v != split.stable)
            await self._unload(model, keep=[split.stable], gone=others)
            return traffic_s, self.clock() - started, others

    async def unload(self, model: str, version: int) -> float:
        """Unloads a version that gets no traffic; seconds until Triton had unloaded it."""
        async with self._lock:
            started = self.clock()
            split = await self._stored(model)
            states = await self._triton(self.triton.model_versions(model))
            ready = sorted(v for v, (state, _) in states.items() if state == READY)
            if version not in ready:
                raise LifecycleError(
                    grpc.StatusCode.NOT_FOUND, f"{model} version {version} is not loaded", "VERSION_NOT_LOADED"
                )
            if ready == [version]:
                raise LifecycleError(
                    grpc.StatusCode.FAILED_PRECONDITION, f"{model} version {version} is the only one", "LAST_VERSION"
                )
            if split is None or split.percent.get(version):
                raise LifecycleError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"{model} version {version} still gets traffic; shift it away first",
                    "VERSION_HAS_TRAFFIC",
                )
            if version == split.stable:
                # The version all traffic now goes to is the one a later rollback returns to.
                await self._write(model, Split.of(split.percent, max(split.percent, key=split.percent.__getitem__)))
            await asyncio.sleep(self.splits.propagation_s)
            await self._unload(model, keep=[v for v in ready if v != version], gone=[version])
            return self.clock() - started

    async def _unload(self, model: str, keep: list[int], gone: list[int]) -> None:
        if not gone:
            return
        await self._drained(model, gone)
        config = await self._triton(self.triton.model_config(model))
        config["version_policy"] = {"specific": {"versions": sorted(keep)}}
        try:
            await self.triton.load_model(model, config, self.load_timeout_s)
        except TritonError as error:
            raise LifecycleError(grpc.StatusCode.UNAVAILABLE, str(error), "UNLOAD_FAILED") from None
        # Triton answers at once and unloads in the background, once in-flight requests are done.
        deadline = self.clock() + self.drain_timeout_s
        while True:
            states = await self._triton(self.triton.model_versions(model))
            if not any(states.get(v, ("",))[0] in _LOADED_STATES for v in gone):
                return
            if self.clock() > deadline:
                raise LifecycleError(
                    grpc.StatusCode.DEADLINE_EXCEEDED, f"{model}: {gone} not unloaded in time", "UNLOAD_SLOW"
                )
            await asyncio.sleep(self.poll_s)

    async def _drained(self, model: str, versions: list[int]) -> None:
        """Waits (bounded) until this replica has no request in flight on ``versions``."""
        deadline = self.clock() + self.drain_timeout_s
        while any(self.in_flight[(model, v)] for v in versions) and self.clock() < deadline:
            await asyncio.sleep(self.poll_s)

    async def _stored(self, model: str) -> Split | None:
        try:
            return await self.splits.read(model)
        except RedisError as error:
            raise LifecycleError(grpc.StatusCode.UNAVAILABLE, f"Redis: {error}", "REDIS_UNAVAILABLE") from None

    async def _write(self, model: str, split: Split) -> None:
        try:
            await self.splits.write(model, split)
        except RedisError as error:
            raise LifecycleError(grpc.StatusCode.UNAVAILABLE, f"Redis: {error}", "REDIS_UNAVAILABLE") from None

    @staticmethod
    async def _triton(call: Any) -> Any:
        try:
            return await call
        except TritonError as error:
            raise LifecycleError(grpc.StatusCode.UNAVAILABLE, str(error), "TRITON_UNAVAILABLE") from None
