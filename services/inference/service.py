"""InferenceService: generation on Triton, with a circuit breaker per model and failover."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

import grpc
from opentelemetry import trace
from prometheus_client import Counter, Gauge

from llmesh.common.v1 import common_pb2
from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from mesh import semconv
from mesh.catalog import find_model
from mesh.deadlines import remaining_s
from mesh.errors import abort
from services.inference.circuit import CircuitBreaker, State
from services.inference.settings import InferenceSettings
from services.inference.triton_client import Chunk, TritonClient, TritonError

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

_FINISH_REASONS = {"stop": common_pb2.FINISH_REASON_STOP, "length": common_pb2.FINISH_REASON_LENGTH}


def _finish_reason(reason: str) -> common_pb2.FinishReason:
    return _FINISH_REASONS.get(reason, common_pb2.FINISH_REASON_UNSPECIFIED)


def _deadline_passed() -> bool:
    remaining = remaining_s()
    return remaining is not None and remaining <= 0


def _usage(request: inference_pb2.GenerateRequest, completion_tokens: int) -> common_pb2.Usage:
    prompt_tokens = len(request.prompt_token_ids)
    return common_pb2.Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


def _sampling_problem(sampling: common_pb2.SamplingParams) -> str | None:
    if sampling.HasField("temperature") and not sampling.temperature >= 0:  # NaN too
        return f"temperature must be >= 0, got {sampling.temperature}"
    if sampling.HasField("top_p") and not 0 < sampling.top_p <= 1:
        return f"top_p must be in (0, 1], got {sampling.top_p}"
    return None


class InferenceService(inference_pb2_grpc.InferenceServiceServicer):
    service_names = [inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name]

    def __init__(
        self,
        settings: InferenceSettings,
        triton: TritonClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.triton = triton or TritonClient(settings)
        self.clock = clock
        self.breakers = {
            model.name: CircuitBreaker(model.name, settings.breaker_config(), clock) for model in settings.models
        }
        for name, breaker in self.breakers.items():
            BREAKER_STATE.labels(name).set_function(lambda breaker=breaker: _BREAKER_STATE_VALUES[breaker.state])

    def register(self, server: grpc.aio.Server) -> None:
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(self, server)

    async def ready(self) -> bool:
        models = [model.name for model in self.settings.models]
        return all(await asyncio.gather(*(self.triton.model_ready(name) for name in models)))

    async def close(self) -> None:
        await self.triton.close()

    async def Generate(self, request, context):
        model, token_ids, logprobs, finish_reason = "", [], [], ""
        async for model, chunk in self._generate(request, context, stream=False):
            token_ids += chunk.token_ids
            logprobs += chunk.token_logprobs
            finish_reason = chunk.finish_reason or finish_reason
        return inference_pb2.GenerateResponse(
            model=model,
            token_ids=token_ids,
            token_logprobs=logprobs,
            finish_reason=_finish_reason(finish_reason),
            usage=_usage(request, len(token_ids)),
        )

    async def GenerateStream(self, request, context):
        completion_tokens = 0
        async for model, chunk in self._generate(request, context, stream=True):
            completion_tokens += len(chunk.token_ids)
            response = inference_pb2.GenerateStreamResponse(
                model=model, token_ids=chunk.token_ids, token_logprobs=chunk.token_logprobs
            )
            if chunk.finish_reason:
                response.finish_reason = _finish_reason(chunk.finish_reason)
                response.usage.CopyFrom(_usage(request, completion_tokens))
            yield response

    async def _generate(self, request, context, *, stream: bool) -> AsyncIterator[tuple[str, Chunk]]:
        """The chunks of the first model in the chain that answers, each with that model's name.

        A model that fails, or whose breaker is open, hands the request to the next one as long
        as nothing has reached the caller: a stream can fail over until its first chunk is sent;
        a unary call collects each attempt whole, so it can fail over at any point.
        """
        chain = await self._chain(request, context)
        sampling = common_pb2.SamplingParams()
        sampling.CopyFrom(request.sampling)
        sampling.max_tokens = sampling.max_tokens or self.settings.default_max_tokens
        span = trace.get_current_span()
        span.set_attribute(semconv.GEN_AI_REQUEST_MODEL, request.model)
        errors: dict[str, str] = {}
        for model in chain:
            if not self.breakers[model].allow():
                errors[model] = "circuit open"
                continue
            if errors:
                self._record_failover(span, from_model=list(errors)[-1], to_model=model)
            sent = False
            try:
                if stream:
                    async for chunk in self._call(model, request.prompt_token_ids, sampling):
                        sent = True
                        yield model, chunk
                else:
                    chunks = [chunk async for chunk in self._call(model, request.prompt_token_ids, sampling)]
                    for chunk in chunks:
                        yield model, chunk
                span.set_attribute(semconv.GEN_AI_RESPONSE_MODEL, model)
                return
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
        await abort(
            context,
            grpc.StatusCode.UNAVAILABLE,
            "no model could answer: " + "; ".join(f"{model}: {why}" for model, why in errors.items()),
            "MODELS_UNAVAILABLE",
            **errors,
        )

    async def _chain(self, request, context) -> list[str]:
        """The models to try in order, once the request was checked."""
        if not request.prompt_token_ids:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "prompt_token_ids is empty", "EMPTY_PROMPT")
        chain = list(dict.fromkeys([request.model, *request.fallback_models]))
        for name in chain:
            if find_model(self.settings.models, name) is None:
                await abort(
                    context, grpc.StatusCode.NOT_FOUND, f"unknown model {name!r}", "MODEL_NOT_FOUND", model=name
                )
        # Requests that no model can serve are refused here: sent on, each would count as a
        # model failure and trip breakers of healthy models.
        problem = _sampling_problem(request.sampling)
        if problem:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem, "INVALID_SAMPLING")
        context_length = find_model(self.settings.models, request.model).context_length
        if len(request.prompt_token_ids) >= context_length:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"prompt has {len(request.prompt_token_ids)} tokens; {request.model} takes fewer than {context_length}",
                "PROMPT_TOO_LONG",
                model=request.model,
            )
        return chain

    async def _call(self, model: str, prompt_ids, sampling: common_pb2.SamplingParams) -> AsyncIterator[Chunk]:
        """One model's chunks, with the outcome reported to its breaker."""
        breaker = self.breakers[model]
        started = self.clock()
        first = True
        try:
            async for chunk in self.triton.generate_stream(model, prompt_ids, sampling):
                if first:
                    breaker.record_ttft(self.clock() - started)
                    first = False
                yield chunk
        except TritonError:
            # A call cut short by the caller's own deadline says nothing about the model.
            if not _deadline_passed():
                breaker.record_failure()
            raise
        breaker.record_success()

    @staticmethod
    def _record_failover(span: trace.Span, *, from_model: str, to_model: str) -> None:
        span.set_attribute(semconv.LLMESH_FAILOVER_FROM, from_model)
        FAILOVERS.labels(from_model, to_model).inc()
        log.warning("failing over", extra={"from_model": from_model, "to_model": to_model})
