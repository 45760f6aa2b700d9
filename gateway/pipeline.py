"""One request through the mesh, the same for every entry point (REST, gRPC, batch).

The gateway is the hub: preprocess -> router -> inference -> postprocess, each a gRPC call from
here. Inputs and outputs are plain dataclasses and the common protos, so an edge only translates
its own wire format.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import grpc
import numpy as np
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from gateway import cascade, tools
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    StreamStalled,
    UpstreamError,
    from_rpc_error,
)
from gateway.experiments.runtime import Answer, Experiments, Trial
from gateway.metrics import TTFT
from gateway.records import (
    ChatInput,
    ChatResult,
    ChatStream,
    ChoiceResult,
    EmbedResult,
    ModerationResult,
    StreamChunk,
    finish_reason_name,
)
from gateway.response_cache import (
    HIT,
    MISS,
    SEMANTIC,
    CachedAnswer,
    CachedResponse,
    Question,
    ResponseCache,
    cache_key,
    question,
    questions_key,
)
from gateway.settings import GatewaySettings
from llmesh.common.v1 import common_pb2
from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from llmesh.postprocess.v1 import postprocess_pb2, postprocess_pb2_grpc
from llmesh.preprocess.v1 import preprocess_pb2, preprocess_pb2_grpc
from llmesh.router.v1 import router_pb2, router_pb2_grpc
from mesh import semconv
from mesh.catalog import AUTO_MODEL, find_model
from mesh.channel import build_channel
from mesh.deadlines import request_deadline
from mesh.sampling import SamplingError, check_budget, check_sampling
from mesh.telemetry import tracer

_tracer = tracer(__name__)
# A message of an upstream's response stream.
_Response = TypeVar("_Response")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Stubs:
    """The upstreams one request talks to (an A/B variant may swap in another deployment)."""

    preprocess: preprocess_pb2_grpc.PreprocessServiceStub
    router: router_pb2_grpc.RouterServiceStub
    inference: inference_pb2_grpc.InferenceServiceStub
    postprocess: postprocess_pb2_grpc.PostprocessServiceStub

    @classmethod
    def over(cls, channels: Mapping[str, grpc.aio.Channel]) -> _Stubs:
        # grpc_tools generates the stubs' constructors unannotated.
        return cls(
            preprocess_pb2_grpc.PreprocessServiceStub(channels["preprocess"]),  # type: ignore[no-untyped-call]
            router_pb2_grpc.RouterServiceStub(channels["router"]),  # type: ignore[no-untyped-call]
            inference_pb2_grpc.InferenceServiceStub(channels["inference"]),  # type: ignore[no-untyped-call]
            postprocess_pb2_grpc.PostprocessServiceStub(channels["postprocess"]),  # type: ignore[no-untyped-call]
        )


@dataclass(frozen=True)
class _Plan:
    """What is settled before generation: who asks, the prepared prompt and the route."""

    context: common_pb2.RequestContext
    created: int
    sampling: common_pb2.SamplingParams
    prompt: preprocess_pb2.PreprocessResponse
    # None when preprocess blocked the prompt: nothing is routed or generated then.
    route: router_pb2.RouteResponse | None
    stubs: _Stubs
    # With tools: how the answer is constrained and read (gateway/tools.py).
    tool_plan: tools.ToolPlan | None = None
    # Where the answer goes in the response cache; empty when it is not cached.
    cache_key: str = ""
    # The question's embedding, for the semantic cache (its tenant opted in, single-turn).
    question: Question | None = None

    @property
    def answers(self) -> int:
        return max(self.sampling.n, 1)

    @property
    def routed(self) -> router_pb2.RouteResponse:
        """The route of a prompt that was not blocked: only such a prompt is generated for."""
        if self.route is None:
            raise RuntimeError("a prompt that preprocess blocked has no route; nothing may be generated for it")
        return self.route

    @property
    def logprobs(self) -> bool:
        return self.sampling.logprobs or self.sampling.top_logprobs > 0

    def generate_request(self) -> inference_pb2.GenerateRequest:
        return inference_pb2.GenerateRequest(
            context=self.context,
            model=self.routed.model,
            fallback_models=self.routed.fallback_models,
            prompts=self.prompt.prompts,
            sampling=self.sampling,
        )

    def refusal(self, requested_model: str) -> ChatResult:
        # Counted in the tokens of the model that was asked for (or of the first one).
        prompt_tokens = next(
            (len(p.token_ids) for p in self.prompt.prompts if p.model == requested_model),
            len(self.prompt.prompts[0].token_ids) if self.prompt.prompts else 0,
        )
        return ChatResult(
            id=self.context.request_id,
            created=self.created,
            model=requested_model or AUTO_MODEL,
            choices=[
                ChoiceResult(i, "", common_pb2.FINISH_REASON_CONTENT_FILTER, self.prompt.verdict)
                for i in range(self.answers)
            ],
            usage=common_pb2.Usage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
            route_reason="",
            experiments=dict(self.context.experiments),
        )

    def read(self, choice: ChoiceResult) -> ChoiceResult:
        """An answer written under a tool plan, read as text or as a call."""
        if self.tool_plan is None or choice.finish_reason == common_pb2.FINISH_REASON_CONTENT_FILTER:
            return choice
        content, calls = tools.read_answer(self.tool_plan, choice.text)
        if not calls:
            return dataclasses.replace(choice, text=content)
        return dataclasses.replace(choice, text="", tool_calls=calls, finish_reason=common_pb2.FINISH_REASON_TOOL_CALLS)


class Pipeline:
    """Holds one channel and stub per upstream service; safe to share between edges."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.channels: dict[str, grpc.aio.Channel] = {
            "preprocess": build_channel(settings.preprocess_addr, settings),
            "router": build_channel(settings.router_addr, settings),
            "inference": build_channel(settings.inference_addr, settings),
            "postprocess": build_channel(settings.postprocess_addr, settings),
        }
        self.stubs = _Stubs.over(self.channels)
        self.cache = ResponseCache(settings)
        self.experiments = Experiments(settings, self.channels)
        # Shadow requests run through this same pipeline, steered by their own trial.
        self.experiments.replay = self.chat
        self.experiments.start()

    async def close(self) -> None:
        await self.experiments.close()
        await self.cache.close()
        for channel in self.channels.values():
            await channel.close()

    async def chat(self, request: ChatInput, trial: Trial | None = None) -> ChatResult:
        trial = trial or self.experiments.trial(request)
        with (
            request_deadline(self.settings.default_deadline_s),
            _tracer.start_as_current_span(semconv.SPAN_GATEWAY_CHAT) as span,
            _observed(trial),
        ):
            cached, key, status, asked = await self._cached(request)
            if cached is not None:
                result = await self._replay(request, cached, span, status)
            else:
                plan = await self._plan(request, span, trial, cache_key=key, question=asked)
                if plan.route is None:
                    result = plan.refusal(request.model)
                else:
                    result = dataclasses.replace(await self._generate(plan), cache=status)
            _record_result(span, result.model, result.finish_reason, result.usage, result.verdict)
            trial.finished(Answer(result.model, result.text, result.finish_reason, result.usage))
            return result

    async def embed(self, model: str, inputs: Sequence[str], tenant: str = "", user: str = "") -> EmbedResult:
        """Embeddings of ``inputs``: the input guard first (a blocked input is refused, PII is
        redacted as for prompts), then the embedding model through the inference service."""
        if not any(spec.name == model for spec in self.settings.embedding_models):
            raise ModelNotFound(model)
        if not inputs:
            raise InvalidRequest("At least one input is required.", param="input")
        context = self._context("embd-", tenant, user)
        with (
            request_deadline(self.settings.default_deadline_s),
            _tracer.start_as_current_span(semconv.SPAN_GATEWAY_EMBED) as span,
        ):
            span.set_attributes(
                {
                    semconv.GEN_AI_SYSTEM: semconv.GEN_AI_SYSTEM_VALUE,
                    semconv.GEN_AI_OPERATION_NAME: "embeddings",
                    semconv.GEN_AI_REQUEST_MODEL: model,
                    semconv.LLMESH_REQUEST_ID: context.request_id,
                    semconv.LLMESH_TENANT_ID: context.tenant_id,
                }
            )
            with _calling("preprocess"):
                checked = await self.stubs.preprocess.Moderate(
                    preprocess_pb2.ModerateRequest(context=context, texts=inputs)
                )
            for position, result in enumerate(checked.results):
                if result.verdict.blocked:
                    _record_verdict(span, result.verdict)
                    raise InvalidRequest(
                        result.verdict.message or "The input was blocked.",
                        reason="CONTENT_FILTER",
                        param=f"input[{position}]",
                        metadata={"rule": result.verdict.rule},
                    )
            with _calling("inference"):
                embedded = await self.stubs.inference.Embed(
                    inference_pb2.EmbedRequest(
                        context=context, model=model, inputs=[result.text for result in checked.results]
                    )
                )
            span.set_attribute(semconv.GEN_AI_USAGE_INPUT_TOKENS, embedded.usage.prompt_tokens)
        return EmbedResult(
            context.request_id, embedded.model, [list(e.values) for e in embedded.embeddings], embedded.usage
        )

    async def moderate(self, inputs: Sequence[str], tenant: str = "") -> ModerationResult:
        """The platform's input guard over ``inputs``, category by category."""
        if not inputs:
            raise InvalidRequest("At least one input is required.", param="input")
        context = self._context("modr-", tenant, "")
        with _calling("preprocess"):
            checked = await self.stubs.preprocess.Moderate(
                preprocess_pb2.ModerateRequest(context=context, texts=inputs)
            )
        return ModerationResult(context.request_id, list(checked.results))

    def _context(self, prefix: str, tenant: str, user: str) -> common_pb2.RequestContext:
        return common_pb2.RequestContext(
            request_id=f"{prefix}{uuid.uuid4().hex}", tenant_id=tenant or self.settings.default_tenant, user_id=user
        )

    async def stream(self, request: ChatInput) -> ChatStream:
        """Everything up to the first generated tokens happens here, so that failures there
        (unknown model, a service down) surface before the edge has answered anything."""
        started = time.perf_counter()
        trial = self.experiments.trial(request)
        span = _tracer.start_span(semconv.SPAN_GATEWAY_CHAT)
        try:
            # The span outlives this call; it is current only while calls are started here,
            # never across a yield to the edge. Every call of the stream starts here, within
            # the request's one deadline.
            with request_deadline(self.settings.stream_deadline_s), trace.use_span(span), _observed(trial):
                cached, key, status, asked = await self._cached(request)
                if cached is not None:
                    result = await self._replay(request, cached, span, status)
                    close = _closer(span)
                    return ChatStream(
                        result.id,
                        result.created,
                        result.model,
                        result.route_reason,
                        _replayed_chunks(result, span, close, trial),
                        close,
                        {},
                        len(result.choices),
                        status,
                    )
                plan = await self._plan(request, span, trial, stream=True, cache_key=key, question=asked)
                if plan.route is None:
                    refusal = plan.refusal(request.model)
                    close = _closer(span)
                    chunks = _refusal_chunks(refusal, span, close, trial)
                    return ChatStream(
                        refusal.id, refusal.created, refusal.model, "", chunks, close, refusal.experiments, plan.answers
                    )
                generation = plan.stubs.inference.GenerateStream(plan.generate_request())
                responses = aiter(generation)
                with _calling("inference"):
                    first = await _next_within(responses, self.settings.stream_idle_timeout_s, span)
                if first is None:
                    raise UpstreamError("The inference service ended its stream without an answer.")
                model = first.model or plan.route.model
                feed = _TokenFeed(plan, model, first, responses)
                released = plan.stubs.postprocess.PostprocessStream(feed.requests())
        except BaseException:
            span.end()
            raise
        close = _closer(span, generation, released)
        remember = (lambda response: self.cache.store_later(key, response, asked)) if plan.cache_key else None
        chunks = _release(
            released, feed, plan, model, span, started, close, trial, self.settings.stream_idle_timeout_s, remember
        )
        return ChatStream(
            plan.context.request_id,
            plan.created,
            model,
            plan.route.reason,
            chunks,
            close,
            dict(plan.context.experiments),
            plan.answers,
            status,
        )

    async def _cached(self, request: ChatInput) -> tuple[CachedResponse | None, str, str, Question | None]:
        """The cached answer to this request if there is one, the key its answer goes under
        (empty when it is not cached), the request's cache status, and its embedded question
        when the semantic cache applies."""
        sampling = self._sampling(request)
        status = self.cache.status(request, sampling, bool(request.forced_variants or self.experiments.active))
        if status != MISS:
            return None, "", status, None
        tenant = request.tenant or self.settings.default_tenant
        key = cache_key(request, sampling, tenant)
        cached = await self.cache.get(key)
        if cached is not None:
            return cached, key, HIT, None
        text = question(request)
        if text is None or not text.strip() or not self.cache.semantic_for(tenant):
            return None, key, MISS, None
        asked = await self._embed_question(request, text, questions_key(request, sampling, tenant))
        match = await self.cache.similar(asked) if asked is not None else None
        if match is not None:
            similar = await self.cache.get(match[0])
            if similar is not None:
                trace.get_current_span().set_attribute(semconv.LLMESH_CACHE_SIMILARITY, match[1])
                return similar, "", SEMANTIC, None
        return None, key, MISS, asked

    async def _embed_question(self, request: ChatInput, text: str, index: str) -> Question | None:
        """The question's embedding; None when the embedding model cannot answer (the request is
        then generated, as any miss)."""
        context = self._context("semc-", request.tenant, request.user)
        try:
            embedded = await self.stubs.inference.Embed(
                inference_pb2.EmbedRequest(context=context, model=self.settings.semantic_cache_model, inputs=[text])
            )
        except grpc.aio.AioRpcError as error:
            log.warning("semantic cache: no embedding", extra={"code": error.code().name})
            return None
        return Question(index, np.asarray(embedded.embeddings[0].values, dtype=np.float32).tobytes())

    async def _replay(self, request: ChatInput, cached: CachedResponse, span: Span, status: str) -> ChatResult:
        """A cached answer released as a fresh one is: its tokens through postprocess, so the
        output guard's current rules decide what leaves."""
        sampling = self._sampling(request)
        prefix = "chatcmpl-" if request.operation == "chat" else "cmpl-"
        context = self._context(prefix, request.tenant, request.user)
        label = "cached answer to a similar question" if status == SEMANTIC else "cached answer"
        span.set_attributes(
            {
                semconv.GEN_AI_SYSTEM: semconv.GEN_AI_SYSTEM_VALUE,
                semconv.GEN_AI_OPERATION_NAME: request.operation,
                semconv.GEN_AI_REQUEST_MODEL: request.model or AUTO_MODEL,
                semconv.LLMESH_REQUEST_ID: context.request_id,
                semconv.LLMESH_TENANT_ID: context.tenant_id,
                semconv.LLMESH_CACHE: status,
            }
        )
        with _calling("postprocess"):
            posts = await asyncio.gather(
                *(
                    self.stubs.postprocess.Postprocess(
                        postprocess_pb2.PostprocessRequest(
                            context=context,
                            token_ids=answer.token_ids,
                            model=cached.model,
                            finish_reason=answer.finish_reason,
                            stop=sampling.stop,
                        )
                    )
                    for answer in cached.answers
                )
            )
        choices = [
            ChoiceResult(
                index=answer.index,
                text=post.text,
                finish_reason=post.finish_reason or answer.finish_reason,
                verdict=post.verdict,
                stop_sequence=post.stop_sequence,
            )
            for answer, post in zip(cached.answers, posts, strict=True)
        ]
        return ChatResult(
            id=context.request_id,
            created=int(time.time()),
            model=cached.model,
            choices=choices,
            usage=cached.usage,
            route_reason=f"{label} ({cached.route_reason})" if cached.route_reason else label,
            cache=status,
        )

    def _stubs(self, trial: Trial) -> _Stubs:
        if not trial.deployments:
            return self.stubs
        return _Stubs.over(trial.channels(self.channels))

    async def _plan(
        self,
        request: ChatInput,
        span: Span,
        trial: Trial,
        stream: bool = False,
        cache_key: str = "",
        question: Question | None = None,
    ) -> _Plan:
        created = int(time.time())
        sampling = self._sampling(request)
        tool_plan = tools.plan(request.tools, request.tool_choice)
        if tool_plan is not None and tool_plan.calls_possible:
            if sampling.structured_output.WhichOneof("format"):
                raise InvalidRequest("response_format cannot be combined with tools.", param="response_format")
            if sampling.logprobs or sampling.top_logprobs:
                raise InvalidRequest("logprobs cannot be combined with tools.", param="logprobs")
            sampling.structured_output.json_schema = json.dumps(tool_plan.schema)
        messages = tools.with_tools(request.messages, tool_plan) if request.tools else request.messages
        prefix = "chatcmpl-" if request.operation == "chat" else "cmpl-"
        context = common_pb2.RequestContext(
            request_id=f"{prefix}{uuid.uuid4().hex}",
            tenant_id=request.tenant or self.settings.default_tenant,
            user_id=request.user,
        )
        span.set_attributes(
            {
                semconv.GEN_AI_SYSTEM: semconv.GEN_AI_SYSTEM_VALUE,
                semconv.GEN_AI_OPERATION_NAME: request.operation,
                semconv.GEN_AI_REQUEST_MODEL: request.model or AUTO_MODEL,
                semconv.GEN_AI_REQUEST_MAX_TOKENS: sampling.max_tokens,
                semconv.LLMESH_REQUEST_ID: context.request_id,
                semconv.LLMESH_TENANT_ID: context.tenant_id,
            }
        )
        context.session_id = request.session_id
        trial.assign(context, span)
        stubs = self._stubs(trial)
        if sampling.HasField("temperature"):
            span.set_attribute(semconv.GEN_AI_REQUEST_TEMPERATURE, sampling.temperature)
        if sampling.HasField("top_p"):
            span.set_attribute(semconv.GEN_AI_REQUEST_TOP_P, sampling.top_p)

        with _calling("preprocess"):
            prompt = await stubs.preprocess.Preprocess(
                preprocess_pb2.PreprocessRequest(context=context, messages=messages, prompt=request.prompt or "")
            )
        _record_verdict(span, prompt.verdict)
        if prompt.verdict.blocked:
            return _Plan(context, created, sampling, prompt, route=None, stubs=stubs, tool_plan=tool_plan)

        with _calling("router"):
            route = await stubs.router.Route(
                router_pb2.RouteRequest(
                    context=context,
                    prompts=prompt.prompts,
                    requested_model=trial.requested_model(request.model),
                    stream=stream,
                )
            )
        span.set_attributes(
            {
                semconv.LLMESH_ROUTE_REASON: route.reason,
                semconv.LLMESH_ROUTE_POLICY: route.policy,
                semconv.LLMESH_ROUTE_FALLBACKS: list(route.fallback_models),
                **{semconv.LLMESH_ROUTE_SIGNAL_PREFIX + name: value for name, value in route.signals.items()},
            }
        )
        if self._too_perplexing(route):
            # Encoded or adversarial payloads read as noise to a language model: the router's
            # perplexity is one more prompt-injection signal, checked before anything is generated.
            prompt.verdict.CopyFrom(
                common_pb2.SafetyVerdict(
                    blocked=True,
                    category=common_pb2.SAFETY_CATEGORY_PROMPT_INJECTION,
                    rule="injection:perplexity",
                    message="The request does not read as natural language and was refused.",
                )
            )
            _record_verdict(span, prompt.verdict)
            return _Plan(context, created, sampling, prompt, route=None, stubs=stubs, tool_plan=tool_plan)
        self._check_budget(route.model, prompt, sampling)
        return _Plan(context, created, sampling, prompt, route, stubs, tool_plan, cache_key, question)

    def _check_budget(
        self, model: str, prompt: preprocess_pb2.PreprocessResponse, sampling: common_pb2.SamplingParams
    ) -> None:
        """The prompt and max_tokens must fit the chosen model's context: a 400 naming the limit,
        before anything reaches the model (whose breaker must never count a client's request)."""
        spec = find_model(self.settings.models, model)
        tokens = next((len(p.token_ids) for p in prompt.prompts if p.model == model), None)
        if spec is None or tokens is None:
            return  # the inference service refuses these with its own error
        try:
            check_budget(sampling, tokens, model, spec.context_length)
        except SamplingError as error:
            raise InvalidRequest(error.message, param=error.param) from None

    def _too_perplexing(self, route: router_pb2.RouteResponse) -> bool:
        limit = self.settings.injection_max_perplexity
        # Only policies that score the prompt report its perplexity; the others skip this check.
        return bool(limit) and route.signals.get("perplexity", 0.0) > limit

    def _sampling(self, request: ChatInput) -> common_pb2.SamplingParams:
        """Checks what every edge must respect and fills in the gateway's defaults."""
        if request.model not in ("", AUTO_MODEL) and find_model(self.settings.models, request.model) is None:
            raise ModelNotFound(request.model)
        if request.operation == "chat" and not request.messages:
            raise InvalidRequest("At least one message is required.", param="messages")
        sampling = common_pb2.SamplingParams()
        sampling.CopyFrom(request.sampling)
        try:
            check_sampling(sampling)
        except SamplingError as error:
            raise InvalidRequest(error.message, param=error.param) from None
        sampling.max_tokens = sampling.max_tokens or self.settings.default_max_tokens
        return sampling

    async def _generate(self, plan: _Plan) -> ChatResult:
        with _calling("inference"):
            generated = await plan.stubs.inference.Generate(plan.generate_request())
        route = plan.routed
        route_reason = route.reason
        if route.cascade.escalate_model:
            generated, route_reason = await cascade.escalate(
                route, generated, plan.generate_request(), plan.stubs.inference, trace.get_current_span()
            )
        model = generated.model or route.model
        answers = list(generated.choices) or [common_pb2.Completion()]
        with _calling("postprocess"):
            posts = await asyncio.gather(
                *(
                    plan.stubs.postprocess.Postprocess(
                        postprocess_pb2.PostprocessRequest(
                            context=plan.context,
                            token_ids=answer.token_ids,
                            model=model,
                            finish_reason=answer.finish_reason,
                            stop=plan.sampling.stop,
                            logprobs=plan.logprobs,
                            token_logprobs=answer.token_logprobs if plan.logprobs else (),
                            top_logprobs=answer.top_logprobs if plan.logprobs else (),
                        )
                    )
                    for answer in answers
                )
            )
        choices = [
            plan.read(
                ChoiceResult(
                    index=answer.index,
                    text=post.text,
                    finish_reason=post.finish_reason or answer.finish_reason,
                    verdict=post.verdict,
                    logprobs=list(post.logprobs),
                    stop_sequence=post.stop_sequence,
                )
            )
            for answer, post in zip(answers, posts, strict=True)
        ]
        if plan.cache_key and all(_cacheable(choice.finish_reason, choice.verdict) for choice in choices):
            answers_kept = [CachedAnswer(a.index, list(a.token_ids), a.finish_reason) for a in answers]
            kept = CachedResponse(model, route_reason, generated.usage, answers_kept)
            self.cache.store_later(plan.cache_key, kept, plan.question)
        return ChatResult(
            id=plan.context.request_id,
            created=plan.created,
            model=model,
            choices=choices,
            usage=generated.usage,
            route_reason=route_reason,
            experiments=dict(plan.context.experiments),
        )


class _TokenFeed:
    """Turns the inference stream into PostprocessStream requests (every answer on the one
    call) and remembers how the generation went."""

    def __init__(
        self,
        plan: _Plan,
        model: str,
        first: inference_pb2.GenerateStreamResponse,
        rest: AsyncIterator[inference_pb2.GenerateStreamResponse],
    ) -> None:
        self.plan = plan
        self.model = model
        self.first = first
        self.rest = rest
        self.answers = plan.answers
        self.usage = common_pb2.Usage()
        self.error: grpc.aio.AioRpcError | None = None
        # Answers whose last message went to postprocess, and those postprocess has ended
        # (e.g. blocked): no more of their tokens are sent.
        self.fed: set[int] = set()
        self.ended: set[int] = set()
        # Every answer's tokens and the engine's finish reason (for the response cache).
        self.tokens: dict[int, list[int]] = {}
        self.finish_reasons: dict[int, common_pb2.FinishReason] = {}

    def end(self, index: int) -> None:
        self.ended.add(index)

    def _request(self, response: inference_pb2.GenerateStreamResponse) -> postprocess_pb2.PostprocessStreamRequest:
        if response.HasField("usage"):
            self.usage = response.usage
        delta = response.delta
        self.tokens.setdefault(delta.index, []).extend(delta.token_ids)
        if delta.finish_reason:
            self.fed.add(delta.index)
            self.finish_reasons[delta.index] = delta.finish_reason
        request = postprocess_pb2.PostprocessStreamRequest(
            index=delta.index, token_ids=delta.token_ids, finish_reason=delta.finish_reason
        )
        if self.plan.logprobs:
            request.token_logprobs.extend(delta.token_logprobs)
            request.top_logprobs.extend(delta.top_logprobs)
        return request

    async def requests(self) -> AsyncIterator[postprocess_pb2.PostprocessStreamRequest]:
        first = self._request(self.first)
        first.context.CopyFrom(self.plan.context)
        first.model = self.model
        first.stop.extend(self.plan.sampling.stop)
        first.answers = self.answers
        first.logprobs = self.plan.logprobs
        yield first
        finish = common_pb2.FINISH_REASON_STOP
        try:
            async for response in self.rest:
                if len(self.ended) == self.answers:
                    break
                if response.delta.index in self.ended:
                    continue
                yield self._request(response)
        except grpc.aio.AioRpcError as error:
            # gRPC runs this iterator in a task of its own and would answer an exception by
            # cancelling the postprocess call, hiding this error; so the answers end as failed
            # and the reader reports the error.
            self.error = error
            finish = common_pb2.FINISH_REASON_ERROR
        # Answers whose stream ended without a last message end here.
        for index in range(self.answers):
            if index not in self.fed and index not in self.ended:
                yield postprocess_pb2.PostprocessStreamRequest(index=index, finish_reason=finish)


async def _release(
    released: grpc.aio.StreamStreamCall,
    feed: _TokenFeed,
    plan: _Plan,
    model: str,
    span: Span,
    started: float,
    close: Callable[[], None],
    trial: Trial,
    idle_s: float,
    remember: Callable[[CachedResponse], None] | None = None,
) -> AsyncGenerator[StreamChunk, None]:
    first_text = True
    # Under a tool plan an answer is read whole when it ends, so its text is held until then.
    held: dict[int, str] = {}
    finals: dict[int, StreamChunk] = {}
    try:
        try:
            # Read to the end even after the final message, so the call completes rather
            # than being cancelled (which both ends would trace as a failure).
            responses = aiter(released)
            while (response := await _next_within(responses, idle_s, span)) is not None:
                if response.index == 0:
                    trial.on_text(response.text_delta)
                if response.text_delta and first_text:
                    first_text = False
                    TTFT.labels(model).observe(time.perf_counter() - started)
                if plan.tool_plan is not None and plan.tool_plan.calls_possible:
                    held[response.index] = held.get(response.index, "") + response.text_delta
                    if not response.finish_reason:
                        continue
                if response.finish_reason:
                    feed.end(response.index)
                    chunk = _final_chunk(plan, response, held.get(response.index))
                    finals[response.index] = chunk
                    if len(finals) < feed.answers:
                        yield chunk
                elif response.text_delta or response.logprobs:
                    yield StreamChunk(response.text_delta, index=response.index, logprobs=list(response.logprobs))
        except grpc.aio.AioRpcError as error:
            # A postprocess failure may only be the echo of an inference failure.
            raise _failure(span, feed.error or error, "inference" if feed.error else "postprocess") from error
        if feed.error is not None:
            raise _failure(span, feed.error, "inference") from feed.error
        # Postprocess ends every answer with a finish reason; the edges rely on that, so they
        # get one for each even if it did not. The stream's last chunk carries the usage.
        missing = [index for index in range(feed.answers) if index not in finals]
        for index in missing[:-1]:
            yield StreamChunk(finish_reason=common_pb2.FINISH_REASON_STOP, index=index)
        # With every answer ended, the last one to end was held back for this.
        last = (
            StreamChunk(finish_reason=common_pb2.FINISH_REASON_STOP, index=missing[-1])
            if missing
            else [*finals.values()][-1]
        )
        last = dataclasses.replace(last, usage=feed.usage)
        verdict = next(
            (c.verdict for c in finals.values() if c.verdict is not None and c.verdict.blocked), last.verdict
        )
        _record_result(span, model, last.finish_reason, last.usage, verdict)
        trial.finished(Answer(model, "".join(trial.text), finals.get(0, last).finish_reason, feed.usage))
        complete = len(feed.finish_reasons) == feed.answers and not missing
        if remember is not None and complete and all(_cacheable(c.finish_reason, c.verdict) for c in finals.values()):
            answers = [CachedAnswer(i, feed.tokens.get(i, []), feed.finish_reasons[i]) for i in range(feed.answers)]
            remember(CachedResponse(model, plan.routed.reason, feed.usage, answers))
        yield last
    except Exception:
        trial.failed()
        raise
    finally:
        close()


def _final_chunk(plan: _Plan, response: postprocess_pb2.PostprocessStreamResponse, held: str | None) -> StreamChunk:
    """An answer's last chunk; under a tool plan, the whole answer read as text or a call."""
    chunk = StreamChunk(
        response.text_delta,
        response.finish_reason,
        verdict=response.verdict,
        index=response.index,
        logprobs=list(response.logprobs),
        stop_sequence=response.stop_sequence,
    )
    if held is None:
        return chunk
    choice = plan.read(ChoiceResult(response.index, held, response.finish_reason, response.verdict))
    return dataclasses.replace(
        chunk, text=choice.text, tool_calls=list(choice.tool_calls), finish_reason=choice.finish_reason
    )


def _cacheable(finish_reason: int, verdict: common_pb2.SafetyVerdict | None) -> bool:
    """An answer worth answering again: finished normally, nothing blocked."""
    blocked = verdict is not None and verdict.blocked
    failed = (common_pb2.FINISH_REASON_CONTENT_FILTER, common_pb2.FINISH_REASON_ERROR)
    return not blocked and finish_reason not in failed


# A word and the spaces after it: a cached answer streams word by word.
_WORD = re.compile(r"\S+\s*|\s+")


async def _replayed_chunks(
    result: ChatResult, span: Span, close: Callable[[], None], trial: Trial
) -> AsyncGenerator[StreamChunk, None]:
    try:
        _record_result(span, result.model, result.finish_reason, result.usage, result.verdict)
        trial.finished(Answer(result.model, result.text, result.finish_reason, result.usage))
        last = len(result.choices) - 1
        for position, choice in enumerate(result.choices):
            for word in _WORD.findall(choice.text):
                yield StreamChunk(word, index=choice.index)
            yield StreamChunk(
                finish_reason=choice.finish_reason,
                usage=result.usage if position == last else None,
                verdict=choice.verdict,
                index=choice.index,
                stop_sequence=choice.stop_sequence,
            )
    finally:
        close()


async def _refusal_chunks(
    refusal: ChatResult, span: Span, close: Callable[[], None], trial: Trial
) -> AsyncGenerator[StreamChunk, None]:
    try:
        _record_result(span, refusal.model, refusal.finish_reason, refusal.usage, refusal.verdict)
        trial.finished(Answer(refusal.model, refusal.text, refusal.finish_reason, refusal.usage))
        last = len(refusal.choices) - 1
        for choice in refusal.choices:
            usage = refusal.usage if choice.index == last else None
            yield StreamChunk(
                finish_reason=choice.finish_reason, usage=usage, verdict=choice.verdict, index=choice.index
            )
    finally:
        close()


def _closer(span: Span, *calls: grpc.aio.Call) -> Callable[[], None]:
    closed = False

    def close() -> None:
        nonlocal closed
        if not closed:
            closed = True
            for call in calls:
                call.cancel()
            span.end()

    return close


@contextmanager
def _observed(trial: Trial) -> Iterator[None]:
    """Counts a failure against the request's variants (a client leaving is no failure)."""
    try:
        yield
    except Exception:
        trial.failed()
        raise


@contextmanager
def _calling(service: str) -> Iterator[None]:
    try:
        yield
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error, service) from error


def _record_verdict(span: Span, verdict: common_pb2.SafetyVerdict) -> None:
    span.set_attribute(semconv.LLMESH_SAFETY_BLOCKED, verdict.blocked)
    if verdict.blocked:
        span.set_attribute(semconv.LLMESH_SAFETY_CATEGORY, common_pb2.SafetyCategory.Name(verdict.category))
        span.set_attribute(semconv.LLMESH_SAFETY_RULE, verdict.rule)


def _record_result(
    span: Span,
    model: str,
    finish_reason: int,
    usage: common_pb2.Usage | None,
    verdict: common_pb2.SafetyVerdict | None,
) -> None:
    usage = usage or common_pb2.Usage()
    span.set_attributes(
        {
            semconv.GEN_AI_RESPONSE_MODEL: model,
            semconv.GEN_AI_RESPONSE_FINISH_REASONS: [finish_reason_name(finish_reason)],
            semconv.GEN_AI_USAGE_INPUT_TOKENS: usage.prompt_tokens,
            semconv.GEN_AI_USAGE_OUTPUT_TOKENS: usage.completion_tokens,
        }
    )
    if verdict is not None and verdict.blocked:
        _record_verdict(span, verdict)


async def _next_within(responses: AsyncIterator[_Response], idle_s: float, span: Span) -> _Response | None:
    """The next message of an upstream stream (None at its end), or StreamStalled when none
    came within ``idle_s``; the caller's clean-up then cancels the calls."""
    try:
        async with asyncio.timeout(idle_s):
            return await anext(responses, None)
    except TimeoutError:
        stalled = StreamStalled(idle_s)
        span.record_exception(stalled)
        span.set_status(Status(StatusCode.ERROR, stalled.message))
        raise stalled from None


def _failure(span: Span, error: grpc.aio.AioRpcError, service: str) -> GatewayError:
    failure = from_rpc_error(error, service)
    span.record_exception(failure)
    span.set_status(Status(StatusCode.ERROR, failure.message))
    return failure
