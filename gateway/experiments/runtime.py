"""The gateway's side of A/B tests: the running experiments, one Trial per request.

Definitions come from Redis and are reloaded when their version moves (polled every
``experiments_refresh_s``), so every gateway replica follows an apply within a second, with no
restart. Assignment is in memory; figures are written to Redis in background tasks after the
answer has left, so neither Redis being slow nor it being down slows or fails a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from opentelemetry.trace import Span
from redis.exceptions import RedisError

from gateway.errors import GatewayError, InvalidRequest
from gateway.experiments.assignment import assign, in_share
from gateway.experiments.definitions import Experiment, Shadow, conflicts, load_file
from gateway.experiments.store import ExperimentStore, Outcome, ShadowComparison
from gateway.settings import GatewaySettings
from llmesh.common.v1 import common_pb2
from mesh import routing, semconv
from mesh.catalog import AUTO_MODEL, find_model
from mesh.discovery import PRIMARY, ChannelPool

if TYPE_CHECKING:
    from gateway.records import ChatInput, ChatResult

log = logging.getLogger(__name__)

# Background writes beyond this many in flight are dropped (Redis is not keeping up).
MAX_PENDING_WRITES = 1000

# How the pipeline runs a request again, for a shadow (set by the Pipeline that owns these).
Replay: TypeAlias = "Callable[[ChatInput, Trial], Awaitable[ChatResult]]"


@dataclass(frozen=True)
class Answer:
    """What a request answered, streamed or not: the part experiments measure and compare."""

    model: str
    text: str
    finish_reason: int
    usage: common_pb2.Usage


class Experiments:
    """Owned by the Pipeline; ``replay`` runs a request again (the shadow's way in)."""

    def __init__(self, settings: GatewaySettings, channels: dict[str, grpc.aio.Channel]) -> None:
        self.settings = settings
        self.store = ExperimentStore.from_url(settings.redis_url, settings)
        self.pool = ChannelPool(settings, channels)
        self.replay: Replay | None = None
        # Running experiments this gateway can serve, by name.
        self.active: dict[str, Experiment] = {}
        self._version: int | None = None
        self._file_version: tuple[int, int] | None = None
        self._healthy = True
        self._loop_task: asyncio.Task | None = None
        self._closing = False
        self._tasks: set[asyncio.Task] = set()
        self._shadows_in_flight = 0

    def start(self) -> None:
        """Starts the reload loop if an event loop runs (else the first request starts it)."""
        if self._loop_task is None:
            with contextlib.suppress(RuntimeError):
                self._loop_task = asyncio.get_running_loop().create_task(self._reload_forever())

    async def close(self, drain_s: float = 2.0) -> None:
        """Stops reloading, lets pending writes finish for a moment, then drops the rest."""
        # A cancellation alone may not stop the reload loop: redis-py can swallow one that lands
        # inside a Redis call (the call then returns as if nothing happened), so the loop also
        # ends at this flag, within one refresh interval.
        self._closing = True
        if self._loop_task is not None:
            self._loop_task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=drain_s)
        tasks = [task for task in [self._loop_task, *self._tasks] if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.pool.close()
        await self.store.close()

    # Definitions.

    async def apply(self, experiments: list[Experiment]) -> None:
        """Stores definitions and serves them here at once (other replicas follow on reload)."""
        await self.store.save(experiments)
        await self.reload()

    async def reload(self) -> None:
        await self._apply_file()
        version = await self.store.version()
        if version != self._version:
            self.install(await self.store.load())
            self._version = version

    def install(self, experiments: list[Experiment]) -> None:
        """Serves the running experiments this gateway can route; one it cannot (a deployment
        with no address here, a model not in the catalog) is left out whole, so no unit is
        counted in a variant that was not really served."""
        usable: dict[str, Experiment] = {}
        for experiment in experiments:
            if experiment.state != "running":
                continue
            problem = self.unservable(experiment) or next(iter(conflicts([*usable.values(), experiment])), None)
            if problem:
                log.error("experiment not served", extra={"experiment": experiment.name, "problem": problem})
                continue
            usable[experiment.name] = experiment
        if usable.keys() != self.active.keys():
            log.info("experiments serving", extra={"experiments": sorted(usable)})
        self.active = usable

    def unservable(self, experiment: Experiment) -> str | None:
        """Why this gateway cannot serve the experiment; None when it can."""
        arms: list[Any] = list(experiment.variants) + ([experiment.shadow] if experiment.shadow else [])
        for arm in arms:
            target = experiment.target
            if target.kind == "service" and self.pool.discovery.address(target.named_service, arm.deployment) is None:
                where = f"deployment {arm.deployment!r} of {target.service}"
                return f"{arm.name}: {where} has no address (LLMESH_VARIANT_ADDRS)"
            if arm.model is not None and find_model(self.settings.models, arm.model) is None:
                return f"{arm.name}: model {arm.model!r} is not in the catalog"
        return None

    async def _apply_file(self) -> None:
        path = self.settings.experiments_file
        if path is None:
            return
        stat = path.stat()
        # Size too: two writes within the file system's timestamp granularity share an mtime.
        version = (stat.st_mtime_ns, stat.st_size)
        if version != self._file_version:
            await self.store.save(load_file(path))
            self._file_version = version
            log.info("experiments file applied", extra={"path": str(path)})

    async def _reload_forever(self) -> None:
        while not self._closing:
            try:
                await self.reload()
                if not self._healthy:
                    log.info("experiment definitions readable again")
                self._healthy = True
            except (RedisError, OSError, ValueError) as error:
                # Logged once per outage: the loop retries every interval.
                if self._healthy:
                    log.warning("cannot reload experiments; serving the last known", extra={"error": str(error)})
                self._healthy = False
            await asyncio.sleep(self.settings.experiments_refresh_s)

    # Requests.

    def trial(self, request: ChatInput) -> Trial:
        self.start()
        unknown = [name for name in request.forced_variants if name not in self.active]
        if unknown:
            raise InvalidRequest(
                f"No running experiment named {', '.join(map(repr, unknown))}.", param="x-llmesh-force-variant"
            )
        for name, variant in request.forced_variants.items():
            if self.active[name].variant(variant) is None:
                raise InvalidRequest(f"Experiment {name!r} has no variant {variant!r}.", param="x-llmesh-force-variant")
        return Trial(self, request)

    def spawn(self, work: Coroutine, context: contextvars.Context | None = None) -> None:
        """Runs work after the answer; a write that fails is logged, never raised."""
        if len(self._tasks) >= MAX_PENDING_WRITES:
            work.close()
            log.warning("experiment write dropped: too many pending")
            return
        task = asyncio.get_running_loop().create_task(self._quietly(work), context=context)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _quietly(work: Coroutine) -> None:
        try:
            await work
        except (RedisError, OSError) as error:
            log.warning("experiment figures not recorded", extra={"error": str(error)})
        except Exception:
            # Background work has no caller to raise to; the answer has already left.
            log.exception("experiment background work failed")
        finally:
            # A task cancelled before it ran leaves its work unstarted; closing it says so.
            work.close()

    def mirror(self, experiment: Experiment, request: ChatInput, primary: Answer, latency_s: float) -> None:
        """Replays the request on the shadow in the background; skipped when the shadow is
        already as busy as allowed, so mirroring never queues up behind itself."""
        replay, shadow = self.replay, experiment.shadow
        if replay is None or self._shadows_in_flight >= self.settings.shadow_max_concurrency:
            return
        if shadow is None:
            raise ValueError(f"experiment {experiment.name!r} has no shadow to mirror to")
        self._shadows_in_flight += 1
        # A fresh context: the shadow is its own trace, and the caller's deadline is not its own.
        work = self._shadow(replay, experiment, shadow, request, primary, latency_s)
        self.spawn(work, context=contextvars.Context())

    async def _shadow(
        self,
        replay: Replay,
        experiment: Experiment,
        shadow: Shadow,
        request: ChatInput,
        primary: Answer,
        latency_s: float,
    ) -> None:
        trial = Trial(self, request, shadow=(experiment, shadow))
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.shadow_timeout_s):
                answer = await replay(replace(request, forced_variants={}), trial)
        except (GatewayError, TimeoutError) as error:
            log.info("shadow request failed", extra={"experiment": experiment.name, "error": str(error)})
            comparison = ShadowComparison(True, latency_s, 0.0, primary.usage.completion_tokens, 0, False, False)
        else:
            comparison = ShadowComparison(
                shadow_error=False,
                primary_latency_s=latency_s,
                shadow_latency_s=time.perf_counter() - started,
                primary_tokens=primary.usage.completion_tokens,
                shadow_tokens=answer.usage.completion_tokens,
                same_text=answer.text == primary.text,
                same_model=answer.model == primary.model,
            )
        finally:
            self._shadows_in_flight -= 1
        await self.store.record_shadow(experiment.name, shadow.name, comparison)


class Trial:
    """One request's assignments and outcome. A shadow trial steers to the shadow and records
    nothing itself (its caller compares and records)."""

    def __init__(
        self, experiments: Experiments, request: ChatInput, shadow: tuple[Experiment, Shadow] | None = None
    ) -> None:
        self.experiments = experiments
        self.request = request
        self.shadow = shadow
        self.started = time.perf_counter()
        self.context: common_pb2.RequestContext | None = None
        # Counted assignments (forced ones are served but kept out of the figures).
        self.recorded: dict[str, str] = {}
        self.deployments: dict[str, str] = {}
        self.model: str | None = None
        self.ttft_s: float | None = None
        self.text: list[str] = []

    def assign(self, context: common_pb2.RequestContext, span: Span) -> None:
        """Once per request, at the gateway: fills context.experiments, which every service sees."""
        self.context = context
        if self.shadow is not None:
            experiment, shadow = self.shadow
            context.experiments[experiment.name] = f"shadow:{shadow.name}"
            routing.set_assignment(context.experiments)
            self._steer(experiment, shadow.deployment, shadow.model)
            return
        for experiment in self.experiments.active.values():
            forced = self.request.forced_variants.get(experiment.name)
            unit_id = _unit_id(experiment.unit, context)
            if forced is None and not unit_id:
                # Without its unit's id a request cannot be assigned stickily; it is served as
                # before and not counted.
                continue
            name = forced or assign(experiment, unit_id)
            context.experiments[experiment.name] = name
            if forced is None:
                self.recorded[experiment.name] = name
            variant = experiment.variant(name)
            if variant is None:
                # Forced variants were checked by Experiments.trial; a refresh since may have dropped one.
                raise InvalidRequest(
                    f"Experiment {experiment.name!r} has no variant {name!r}.", param="x-llmesh-force-variant"
                )
            self._steer(experiment, variant.deployment, variant.model)
        span.set_attributes({semconv.LLMESH_EXPERIMENT_PREFIX + name: v for name, v in context.experiments.items()})
        routing.set_assignment(context.experiments)
        if self.recorded:
            self.experiments.spawn(
                self.experiments.store.remember(context.request_id, self.recorded, context.tenant_id)
            )

    def _steer(self, experiment: Experiment, deployment: str, model: str | None) -> None:
        if experiment.target.kind == "service" and deployment != PRIMARY:
            self.deployments[experiment.target.named_service] = deployment
        if experiment.target.kind == "model":
            self.model = model

    def requested_model(self, requested: str) -> str:
        """A model experiment answers the requests that let the platform choose."""
        return self.model if self.model and requested in ("", AUTO_MODEL) else requested

    def channels(self, primary: Mapping[str, grpc.aio.Channel]) -> dict[str, grpc.aio.Channel]:
        """The channel to each upstream for this request's variants."""
        return {
            service: self.experiments.pool.channel(service, self.deployments[service])
            if service in self.deployments
            else channel
            for service, channel in primary.items()
        }

    def on_text(self, delta: str) -> None:
        if self.ttft_s is None and delta:
            self.ttft_s = time.perf_counter() - self.started
        self.text.append(delta)

    def failed(self) -> None:
        if self.recorded and self.context is not None:
            self._write(Outcome(error=True))

    def finished(self, result: Answer) -> None:
        if not self.recorded or self.context is None:
            return
        latency_s = time.perf_counter() - self.started
        usage = result.usage
        spec = find_model(self.experiments.settings.models, result.model)
        cost = 0.0
        if spec is not None:
            cost = (
                usage.prompt_tokens * spec.price_input_per_1k + usage.completion_tokens * spec.price_output_per_1k
            ) / 1000
        self._write(
            Outcome(
                latency_s=latency_s,
                ttft_s=self.ttft_s,
                input_tokens=usage.prompt_tokens,
                output_tokens=usage.completion_tokens,
                cost=cost,
                blocked=result.finish_reason == common_pb2.FINISH_REASON_CONTENT_FILTER,
                model=result.model if spec is not None else "",
            )
        )
        if result.finish_reason in (common_pb2.FINISH_REASON_CONTENT_FILTER, common_pb2.FINISH_REASON_ERROR):
            return
        for name in self.recorded:
            experiment = self.experiments.active.get(name)
            if experiment is None or experiment.shadow is None:
                continue
            if in_share(f"{experiment.hash_salt}:shadow", self.context.request_id, experiment.shadow.share):
                self.experiments.mirror(experiment, self.request, result, latency_s)

    def _write(self, outcome: Outcome) -> None:
        self.experiments.spawn(self.experiments.store.record(self.recorded, outcome))


def _unit_id(unit: str, context: common_pb2.RequestContext) -> str:
    return {
        "tenant": context.tenant_id,
        "user": context.user_id,
        "session": context.session_id,
        "request": context.request_id,
    }[unit]
