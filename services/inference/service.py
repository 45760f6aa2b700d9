"""InferenceService: generation and scoring on Triton's engines, a circuit breaker per model,
failover along the request's chain of models."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
from opentelemetry import trace
from prometheus_client import Counter, Gauge

from llmesh.common.v1 import common_pb2
from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from mesh import semconv
from mesh.catalog import ModelSpec, find_model
from mesh.deadlines import remaining_s
from mesh.errors import abort
from mesh.redis_client import async_redis
from mesh.sampling import SamplingError, check_budget, check_sampling
from mesh.shedding import OVERLOADED, RETRY_AFTER_S
from services.inference.admission import ModelAdmissions, ModelFull, triton_refused
from services.inference.circuit import CircuitBreaker, State
from services.inference.lifecycle import LifecycleError, ModelLifecycle
from services.inference.settings import InferenceSettings
from services.inference.triton_client import (
    Chunk,
    QueueFull,
    RequestRejected,
    TritonClient,
    TritonError,
    engine_parameters,
)
from services.inference.versions import TrafficSplits

log = logging.getLogger(__name__)

FAILOVERS = Counter(
    semconv.METRIC_INFERENCE_FAILOVERS,
    "Requests handed from a failed (or circuit-open) model to the next in their fallback chain",
    ["from_model", "to_model"],
)
BREAKER_STATE = Gauge(
    semconv.METRIC_INFERENCE_BREAKER_STATE, "Each model's circuit breaker: 0 closed, 1 half-open, 2 open", ["model"]
)
_BREAKER_STATE_VALUES = {State.CLOSED: 0, State.HALF_OPEN: 1, State.OPEN: 2}
# The service stays SERVING while any model is ready (mesh.server.Health.watch): this, and the
# health entry of each model, say which ones are.
MODEL_READY = Gauge(
    semconv.METRIC_INFERENCE_MODEL_READY,
    "Each catalog model's readiness on Triton at the last check: 1 ready",
    ["model"],
)
VERSION_REQUESTS = Counter(
    semconv.METRIC_INFERENCE_VERSION_REQUESTS,
    "Engine calls per model version chosen by its traffic split (version '' while it has none)",
    ["model", "version"],
)
VERSION_FAILOVERS = Counter(
    semconv.METRIC_INFERENCE_VERSION_FAILOVERS,
    "Engine calls handed from a version that failed before its first chunk (e.g. just unloaded) to another",
    ["model", "from_version"],
)


def _breaker_state(breaker: CircuitBreaker) -> Callable[[], float]:
    """The breaker's state as its gauge reads it."""
    return lambda: _BREAKER_STATE_VALUES[breaker.state]


_FINISH_REASONS = {
    "stop": common_pb2.FINISH_REASON_STOP,
    "length": common_pb2.FINISH_REASON_LENGTH,
    "abort": common_pb2.FINISH_REASON_ERROR,
}


def _finish_reason(reason: str) -> common_pb2.FinishReason:
    return _FINISH_REASONS.get(reason, common_pb2.FINISH_REASON_UNSPECIFIED)


def _deadline_passed() -> bool:
    remaining = remaining_s()
    return remaining is not None and remaining <= 0


def _completion(chunk: Chunk) -> common_pb2.Completion:
    return common_pb2.Completion(
        index=chunk.index,
        token_ids=chunk.token_ids,
        token_logprobs=chunk.token_logprobs,
        top_logprobs=[common_pb2.TopLogprobs(token_ids=ids, logprobs=values) for ids, values in chunk.top_logprobs],
        finish_reason=_finish_reason(chunk.finish_reason),
    )


class _Usage:
    """The engine's own counts, summed over a request's answers."""

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.completion: dict[int, int] = {}

    def add(self, chunk: Chunk) -> None:
        self.prompt_tokens = chunk.prompt_tokens
        self.cached_tokens = chunk.cached_tokens
        self.completion[chunk.index] = chunk.completion_tokens

    def proto(self) -> common_pb2.Usage:
        completion = sum(self.completion.values())
        return common_pb2.Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion,
            total_tokens=self.prompt_tokens + completion,
            cached_prompt_tokens=self.cached_tokens,
        )


class InferenceService(inference_pb2_grpc.InferenceServiceServicer):
    service_names: Sequence[str] = (inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name,)

    def __init__(
        self,
        settings: InferenceSettings,
        triton: TritonClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        splits: TrafficSplits | None = None,
    ) -> None:
        self.settings = settings
        self.triton = triton or TritonClient(settings)
        self.clock = clock
        generation = [model.name for model in settings.models]
        self.splits = splits or TrafficSplits(async_redis(settings), generation, settings.model_split_refresh_s)
        # Engine calls in flight per (model, version): an unload waits for its version's to end.
        self.in_flight: Tally[tuple[str, int | None]] = Tally()
        self.lifecycle = ModelLifecycle(
            self.triton,
            self.splits,
            self.in_flight,
            load_timeout_s=settings.model_load_timeout_s,
            drain_timeout_s=settings.model_drain_timeout_s,
        )
        names = generation + [model.name for model in settings.embedding_models]
        self.breakers = {name: CircuitBreaker(name, settings.breaker_config(), clock) for name in names}
        self.admissions = ModelAdmissions((name, *settings.model_limit(name)) for name in names)
        for name, breaker in self.breakers.items():
            # Read when scraped, so the gauge is never behind the breaker.
            BREAKER_STATE.labels(name).set_function(_breaker_state(breaker))

    def register(self, server: grpc.aio.Server) -> None:
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(self, server)

    async def ready(self) -> dict[str, bool]:
        """Each catalog model's readiness on Triton (an engine takes a while to load), each also
        reported as its own health entry so that the gateway's /readyz can say which is loading."""
        # Called in the serving loop from the start: the splits' background reads start with it.
        self.splits.start()
        models = [model.name for model in self.settings.models] + [m.name for m in self.settings.embedding_models]
        ready = dict(
            zip(models, await asyncio.gather(*(self.triton.model_ready(name) for name in models)), strict=True)
        )
        for name, up in ready.items():
            MODEL_READY.labels(name).set(1 if up else 0)
        return ready

    async def close(self) -> None:
        await self.splits.close()
        await self.triton.close()

    async def Generate(self, request, context):
        choices: dict[int, common_pb2.Completion] = {}
        model, usage = "", _Usage()
        async for chunk_model, chunk in self._generate(request, context, stream=False):
            model = chunk_model  # every chunk names the model that answered
            usage.add(chunk)
            choice = choices.setdefault(chunk.index, common_pb2.Completion(index=chunk.index))
            choice.MergeFrom(_completion(chunk))
        return inference_pb2.GenerateResponse(
            model=model, choices=[choices[i] for i in sorted(choices)], usage=usage.proto()
        )

    async def GenerateStream(self, request, context):
        usage, finished = _Usage(), set()
        answers = max(request.sampling.n, 1)
        async for model, chunk in self._generate(request, context, stream=True):
            usage.add(chunk)
            response = inference_pb2.GenerateStreamResponse(model=model, delta=_completion(chunk))
            if chunk.finish_reason:
                finished.add(chunk.index)
                # The stream's last message (every answer has ended) carries the engine's counts.
                if len(finished) == answers:
                    response.usage.CopyFrom(usage.proto())
            yield response

    async def Score(self, request: inference_pb2.ScoreRequest, context) -> inference_pb2.ScoreResponse:
        model = request.model
        if find_model(self.settings.models, model) is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"unknown model {model!r}", "MODEL_NOT_FOUND", model=model)
        if len(request.prompt_token_ids) < 2:
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "scoring needs at least 2 prompt tokens", "PROMPT_TOO_SHORT"
            )
        breaker = self.breakers[model]
        if not breaker.allow():
            await abort(context, grpc.StatusCode.UNAVAILABLE, f"{model}: circuit open", "CIRCUIT_OPEN", model=model)
        try:
            # Scored by the version the split would answer with (another version's perplexity differs).
            version = self.splits.versions(model)[0]
            async with self.admissions.slot(model):
                logprobs = await self._counted(
                    model, breaker, self.triton.score(model, request.prompt_token_ids, version)
                )
        except ModelFull as full:
            await self._refuse_overloaded(context, {model: full.reason})
        except RequestRejected as error:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(error), "REQUEST_REJECTED", model=model)
        except TritonError as error:
            code = grpc.StatusCode.DEADLINE_EXCEEDED if _deadline_passed() else grpc.StatusCode.UNAVAILABLE
            await abort(context, code, str(error), "SCORING_FAILED", model=model)
        perplexity = math.exp(-sum(logprobs) / len(logprobs))
        return inference_pb2.ScoreResponse(model=model, token_logprobs=logprobs, perplexity=perplexity)

    async def Embed(self, request: inference_pb2.EmbedRequest, context) -> inference_pb2.EmbedResponse:
        model = request.model
        if not any(spec.name == model for spec in self.settings.embedding_models):
            await abort(
                context, grpc.StatusCode.NOT_FOUND, f"unknown embedding model {model!r}", "MODEL_NOT_FOUND", model=model
            )
        if not request.inputs:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "no inputs to embed", "EMPTY_INPUT", param="input")
        breaker = self.breakers[model]
        if not breaker.allow():
            await abort(context, grpc.StatusCode.UNAVAILABLE, f"{model}: circuit open", "CIRCUIT_OPEN", model=model)
        try:
            async with self.admissions.slot(model):
                vectors, counts = await self._counted(model, breaker, self.triton.embed(model, list(request.inputs)))
        except ModelFull as full:
            await self._refuse_overloaded(context, {model: full.reason})
        except RequestRejected as error:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(error), "REQUEST_REJECTED", model=model)
        except TritonError as error:
            code = grpc.StatusCode.DEADLINE_EXCEEDED if _deadline_passed() else grpc.StatusCode.UNAVAILABLE
            await abort(context, code, str(error), "EMBEDDING_FAILED", model=model)
        tokens = sum(counts)
        return inference_pb2.EmbedResponse(
            model=model,
            embeddings=[inference_pb2.Embedding(values=vector.tolist()) for vector in vectors],
            usage=common_pb2.Usage(prompt_tokens=tokens, total_tokens=tokens),
        )

    async def ListModelVersions(self, request, context) -> inference_pb2.ListModelVersionsResponse:
        names = [request.model] if request.model else [model.name for model in self.settings.models]
        for name in names:
            await self._check_model(context, name)
        return inference_pb2.ListModelVersionsResponse(
            models=[await self._lifecycle_call(context, self._versions(name)) for name in names]
        )

    async def LoadModelVersion(self, request, context) -> inference_pb2.LoadModelVersionResponse:
        await self._check_model(context, request.model)
        seconds = await self._lifecycle_call(
            context, self.lifecycle.load(request.model, request.version, request.model_dir)
        )
        versions = await self._lifecycle_call(context, self._versions(request.model))
        return inference_pb2.LoadModelVersionResponse(model=versions, seconds=seconds)

    async def SetTrafficSplit(self, request, context) -> inference_pb2.SetTrafficSplitResponse:
        await self._check_model(context, request.model)
        await self._lifecycle_call(context, self.lifecycle.shift(request.model, dict(request.percent)))
        versions = await self._lifecycle_call(context, self._versions(request.model))
        return inference_pb2.SetTrafficSplitResponse(model=versions)

    async def RollBack(self, request, context) -> inference_pb2.RollBackResponse:
        await self._check_model(context, request.model)
        traffic_s, seconds, unloaded = await self._lifecycle_call(context, self.lifecycle.roll_back(request.model))
        versions = await self._lifecycle_call(context, self._versions(request.model))
        return inference_pb2.RollBackResponse(
            model=versions, traffic_seconds=traffic_s, seconds=seconds, unloaded=unloaded
        )

    async def UnloadModelVersion(self, request, context) -> inference_pb2.UnloadModelVersionResponse:
        await self._check_model(context, request.model)
        seconds = await self._lifecycle_call(context, self.lifecycle.unload(request.model, request.version))
        versions = await self._lifecycle_call(context, self._versions(request.model))
        return inference_pb2.UnloadModelVersionResponse(model=versions, seconds=seconds)

    async def ListBreakers(self, request, context) -> inference_pb2.ListBreakersResponse:
        return inference_pb2.ListBreakersResponse(
            replica=self.settings.service_name,
            breakers=[
                inference_pb2.Breaker(model=name, state=breaker.state.value) for name, breaker in self.breakers.items()
            ],
        )

    async def _check_model(self, context, model: str) -> None:
        if find_model(self.settings.models, model) is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"unknown model {model!r}", "MODEL_NOT_FOUND", model=model)

    async def _versions(self, model: str) -> inference_pb2.ModelVersions:
        states, split = await self.lifecycle.versions(model)
        percent = split.percent if split is not None else {}
        known = sorted({*states, *percent})
        return inference_pb2.ModelVersions(
            model=model,
            split_set=split is not None,
            versions=[
                inference_pb2.ModelVersion(
                    version=version,
                    state=states.get(version, ("UNAVAILABLE", ""))[0],
                    reason=states.get(version, ("", ""))[1],
                    percent=percent.get(version, 0),
                    stable=split is not None and split.stable == version,
                )
                for version in known
            ],
        )

    @staticmethod
    async def _lifecycle_call(context, call: Any) -> Any:
        try:
            return await call
        except LifecycleError as error:
            await abort(context, error.code, str(error), error.reason)

    async def _counted(self, model: str, breaker: CircuitBreaker, call: Any) -> Any:
        """A unary engine call whose outcome the model's breaker counts (never a rejected request,
        nor one Triton's full queue refused)."""
        try:
            result = await call
        except RequestRejected:
            raise
        except QueueFull:
            raise triton_refused(model) from None
        except TritonError:
            if not _deadline_passed():
                breaker.record_failure()
            raise
        breaker.record_success()
        return result

    async def _generate(self, request, context, *, stream: bool) -> AsyncIterator[tuple[str, Chunk]]:
        """The chunks of the first model in the chain that answers, each with that model's name.

        A model that fails, or whose breaker is open, hands the request to the next one as long
        as nothing has reached the caller: a stream can fail over until its first chunk is sent;
        a unary call collects each attempt whole, so it can fail over at any point. A request the
        engine refuses as invalid is the caller's error: it is answered INVALID_ARGUMENT and
        counts against no model. A model at capacity (no slot and no room in its queue here, or
        Triton's queue full) also hands the request on; when no model could take it and one of
        them was full, the caller is told to come back (RESOURCE_EXHAUSTED, OVERLOADED).
        """
        chain = await self._chain(request, context)
        span = trace.get_current_span()
        span.set_attribute(semconv.GEN_AI_REQUEST_MODEL, request.model)
        errors: dict[str, str] = {}
        full: dict[str, str] = {}
        for model, prompt_ids, params in chain:
            if not self.breakers[model].allow():
                errors[model] = "circuit open"
                continue
            if errors:
                self._record_failover(span, from_model=list(errors)[-1], to_model=model)
            sent = False
            try:
                # A stream holds its slot until its last chunk was sent.
                async with self.admissions.slot(model):
                    if stream:
                        async for chunk in self._call(model, prompt_ids, params):
                            sent = True
                            yield model, chunk
                    else:
                        chunks = [chunk async for chunk in self._call(model, prompt_ids, params)]
                        for chunk in chunks:
                            yield model, chunk
                span.set_attribute(semconv.GEN_AI_RESPONSE_MODEL, model)
                return
            except ModelFull as error:
                log.info("model at capacity", extra={"model": model, "reason": error.reason})
                full[model] = errors[model] = error.reason
            except RequestRejected as error:
                await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(error), "REQUEST_REJECTED", model=model)
            except TritonError as error:
                if _deadline_passed():
                    await abort(
                        context, grpc.StatusCode.DEADLINE_EXCEEDED, str(error), "DEADLINE_EXCEEDED", model=model
                    )
                if sent:
                    await abort(
                        context,
                        grpc.StatusCode.UNAVAILABLE,
                        f"{model} failed after streaming began: {error}",
                        "STREAM_INTERRUPTED",
                        model=model,
                    )
                log.warning("model failed", extra={"model": model, "error": str(error)})
                errors[model] = str(error)
        if full:
            await self._refuse_overloaded(context, errors)
        await abort(
            context,
            grpc.StatusCode.UNAVAILABLE,
            "no model could answer: " + "; ".join(f"{model}: {why}" for model, why in errors.items()),
            "MODELS_UNAVAILABLE",
            **errors,
        )

    async def _chain(self, request, context) -> list[tuple[str, list[int], dict[str, Any]]]:
        """(model, its prompt tokens, engine parameters) to try in order, once the request was
        checked. Requests that no model could serve are refused here: sent on, each would count
        as a model failure and trip breakers of healthy models."""
        sampling = common_pb2.SamplingParams()
        sampling.CopyFrom(request.sampling)
        sampling.max_tokens = sampling.max_tokens or self.settings.default_max_tokens
        prompts = {prompt.model: list(prompt.token_ids) for prompt in request.prompts}
        names = list(dict.fromkeys([request.model, *request.fallback_models]))
        specs: list[ModelSpec] = []
        for name in names:
            spec = find_model(self.settings.models, name)
            if spec is None:
                await abort(
                    context, grpc.StatusCode.NOT_FOUND, f"unknown model {name!r}", "MODEL_NOT_FOUND", model=name
                )
            specs.append(spec)
        try:
            check_sampling(sampling)
            params = engine_parameters(sampling)
        except SamplingError as error:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, error.message, "INVALID_SAMPLING", param=error.param)
        except RequestRejected as error:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(error), "INVALID_SAMPLING")
        chain = []
        for spec in specs:
            prompt_ids = prompts.get(spec.name)
            primary = spec.name == request.model
            if not prompt_ids:
                if primary:
                    message = f"no prompt for {spec.name}"
                    await abort(context, grpc.StatusCode.INVALID_ARGUMENT, message, "EMPTY_PROMPT", model=spec.name)
                continue
            try:
                check_budget(sampling, len(prompt_ids), spec.name, spec.context_length)
            except SamplingError as error:
                if primary:
                    await abort(
                        context,
                        grpc.StatusCode.INVALID_ARGUMENT,
                        error.message,
                        "CONTEXT_EXCEEDED",
                        param=error.param,
                        model=spec.name,
                    )
                # A fallback that cannot hold this request is no failure of it: it is left out.
                continue
            chain.append((spec.name, prompt_ids, params))
        return chain

    async def _call(self, model: str, prompt_ids: list[int], params: dict[str, Any]) -> AsyncIterator[Chunk]:
        """One model's chunks, from the version its traffic split picks, with the outcome
        reported to its breaker. A version that fails before its first chunk (one unloaded while
        a replica still had the old split) hands the call to the model's next version."""
        breaker = self.breakers[model]
        started = self.clock()
        first = True
        versions = self.splits.versions(model)
        for attempt, version in enumerate(versions):
            label = "" if version is None else str(version)
            VERSION_REQUESTS.labels(model, label).inc()
            self.in_flight[(model, version)] += 1
            try:
                async for chunk in self.triton.generate_stream(model, prompt_ids, params, version=version):
                    if first:
                        breaker.record_ttft(self.clock() - started)
                        first = False
                    yield chunk
            except RequestRejected:
                raise
            except QueueFull:
                # Triton's queue of the model is full: no other version would be less loaded
                # than the one the split picked, and a full queue is no failure of the model.
                raise triton_refused(model) from None
            except TritonError as error:
                if first and attempt + 1 < len(versions) and not _deadline_passed():
                    VERSION_FAILOVERS.labels(model, label).inc()
                    why = {"model": model, "version": label, "error": str(error)}
                    log.warning("version failed, trying the next", extra=why)
                    continue
                # A call cut short by the caller's own deadline says nothing about the model.
                if not _deadline_passed():
                    breaker.record_failure()
                raise
            finally:
                self.in_flight[(model, version)] -= 1
            breaker.record_success()
            return

    @staticmethod
    async def _refuse_overloaded(context, why: dict[str, str]) -> None:
        """RESOURCE_EXHAUSTED with mesh.shedding's ErrorInfo, which the gateway answers 429 with
        Retry-After; ``why``: each model tried and why it did not answer."""
        await abort(
            context,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "no model had capacity ("
            + "; ".join(f"{model}: {reason}" for model, reason in why.items())
            + f"); retry in {RETRY_AFTER_S} s.",
            OVERLOADED,
            retry_after=str(RETRY_AFTER_S),
            **why,
        )

    @staticmethod
    def _record_failover(span: trace.Span, *, from_model: str, to_model: str) -> None:
        span.set_attribute(semconv.LLMESH_FAILOVER_FROM, from_model)
        FAILOVERS.labels(from_model, to_model).inc()
        log.warning("failing over", extra={"from_model": from_model, "to_model": to_model})
