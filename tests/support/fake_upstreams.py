"""In-process fakes of the four upstream services, for testing the gateway on its own.

One servicer implements all four APIs so a test starts a single server
(``mesh.server.start_service(FakeUpstreams(), settings, "127.0.0.1:0")``) and points every
upstream address at it. Token ids are UTF-8 bytes, so text and token counts line up without a
tokenizer.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

import grpc

from gateway.settings import GatewaySettings
from llmesh.common.v1 import common_pb2
from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from llmesh.postprocess.v1 import postprocess_pb2, postprocess_pb2_grpc
from llmesh.preprocess.v1 import preprocess_pb2, preprocess_pb2_grpc
from llmesh.router.v1 import router_pb2, router_pb2_grpc
from mesh.catalog import AUTO_MODEL, default_models
from mesh.errors import abort
from mesh.net import free_port

# A prompt containing this word is blocked by preprocess.
BLOCKED_WORD = "forbidden"
BLOCKED_MESSAGE = "The prompt contains a blocked word."
# A prompt containing this word makes the inference stream fail after its first chunk.
FAIL_MID_STREAM = "explode"
# A prompt containing this word makes unary generation fail (INTERNAL).
FAIL_GENERATE = "crash"
# A prompt containing this word makes the inference stream pause between chunks.
SLOW_STREAM = "slowly"
ROUTED_MODEL = "llmesh-small"
ROUTE_REASON = "fake: shortest prompt"
# Stream chunk size in tokens (bytes).
CHUNK = 4


def _prompt_ids(request: inference_pb2.GenerateRequest) -> list[int]:
    return next((list(p.token_ids) for p in request.prompts if p.model == request.model), [])


def reply_for(model: str) -> str:
    return f"Hello from {model}!"


def unused_addr() -> str:
    """A loopback address nothing listens on (the port was free a moment ago)."""
    return f"127.0.0.1:{free_port()}"


def gateway_settings(upstream_addr: str, **overrides) -> GatewaySettings:
    """Settings with every upstream at ``upstream_addr``, short deadlines and no Redis."""
    values = {
        "preprocess_addr": upstream_addr,
        "router_addr": upstream_addr,
        "inference_addr": upstream_addr,
        "postprocess_addr": upstream_addr,
        "redis_url": f"redis://{unused_addr()}/0",
        "default_deadline_s": 5.0,
        "readiness_timeout_s": 0.5,
        # No Redis: no API keys (requests are the default tenant's), rate limits or audit trail.
        "auth_required": False,
        "rate_limits_enabled": False,
        "audit_enabled": False,
        **overrides,
    }
    return GatewaySettings(**values)


class FakeUpstreams(
    preprocess_pb2_grpc.PreprocessServiceServicer,
    router_pb2_grpc.RouterServiceServicer,
    inference_pb2_grpc.InferenceServiceServicer,
    postprocess_pb2_grpc.PostprocessServiceServicer,
):
    service_names = tuple(
        module.DESCRIPTOR.services_by_name[name].full_name
        for module, name in (
            (preprocess_pb2, "PreprocessService"),
            (router_pb2, "RouterService"),
            (inference_pb2, "InferenceService"),
            (postprocess_pb2, "PostprocessService"),
        )
    )

    def __init__(self) -> None:
        # Service name -> the requests it received, for asserting what the gateway sent.
        self.requests: dict[str, list] = defaultdict(list)
        # Inference streams the gateway cancelled (their caller went away).
        self.cancelled_streams = 0
        # How long each unary generation takes (batch tests need requests that take time), and
        # how many were in flight at once at most since the last reset_peak().
        self.generate_delay_s = 0.0
        self.generating = 0
        self.peak_generating = 0
        # Seconds each inference stream waits before its first, second, ... chunk (streams
        # slower than a deadline, or stalled).
        self.stream_pauses_s: list[float] = []
        # Seconds each preprocess call waits (a slow hop), and the time each call had left of
        # its deadline when it arrived, per service.
        self.preprocess_delay_s = 0.0
        self.time_remaining: dict[str, list[float | None]] = defaultdict(list)

    def register(self, server: grpc.aio.Server) -> None:
        preprocess_pb2_grpc.add_PreprocessServiceServicer_to_server(self, server)
        router_pb2_grpc.add_RouterServiceServicer_to_server(self, server)
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(self, server)
        postprocess_pb2_grpc.add_PostprocessServiceServicer_to_server(self, server)

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        pass

    async def Preprocess(self, request, context):
        self.requests["preprocess"].append(request)
        self.time_remaining["preprocess"].append(context.time_remaining())
        if self.preprocess_delay_s:
            await asyncio.sleep(self.preprocess_delay_s)
        text = request.prompt or "\n".join(message.content for message in request.messages)
        if BLOCKED_WORD in text:
            verdict = common_pb2.SafetyVerdict(
                blocked=True,
                category=common_pb2.SAFETY_CATEGORY_SENSITIVE_WORD,
                rule="lexicon:en:test",
                message=BLOCKED_MESSAGE,
            )
            return preprocess_pb2.PreprocessResponse(verdict=verdict)
        prompts = [
            common_pb2.ModelPrompt(model=m.name, text=text, token_ids=list(text.encode())) for m in default_models()
        ]
        return preprocess_pb2.PreprocessResponse(verdict=common_pb2.SafetyVerdict(), prompts=prompts)

    async def Route(self, request, context):
        self.requests["router"].append(request)
        model = ROUTED_MODEL if request.requested_model in ("", AUTO_MODEL) else request.requested_model
        return router_pb2.RouteResponse(
            model=model,
            fallback_models=[m.name for m in default_models() if m.name != model],
            reason=ROUTE_REASON,
            policy="fake",
            signals={"perplexity": 12.5},
        )

    def _answer(self, request) -> tuple[list[int], int, common_pb2.Usage]:
        reply = reply_for(request.model).encode()
        limit = request.sampling.max_tokens or len(reply)
        token_ids = list(reply[:limit])
        finish = common_pb2.FINISH_REASON_LENGTH if len(reply) > limit else common_pb2.FINISH_REASON_STOP
        prompt_tokens = len(_prompt_ids(request))
        usage = common_pb2.Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=len(token_ids),
            total_tokens=prompt_tokens + len(token_ids),
        )
        return token_ids, finish, usage

    def reset_peak(self) -> None:
        self.peak_generating = self.generating

    async def Generate(self, request, context):
        self.requests["inference"].append(request)
        self.time_remaining["inference"].append(context.time_remaining())
        self.generating += 1
        self.peak_generating = max(self.peak_generating, self.generating)
        try:
            if self.generate_delay_s:
                await asyncio.sleep(self.generate_delay_s)
        finally:
            self.generating -= 1
        if FAIL_GENERATE.encode() in bytes(i for i in _prompt_ids(request) if i < 256):
            await abort(context, grpc.StatusCode.INTERNAL, "the model crashed", "MODEL_FAILED")
        token_ids, finish, usage = self._answer(request)
        answers = max(request.sampling.n, 1)
        choices = [common_pb2.Completion(index=i, token_ids=token_ids, finish_reason=finish) for i in range(answers)]
        usage.completion_tokens *= answers
        usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
        return inference_pb2.GenerateResponse(model=request.model, choices=choices, usage=usage)

    async def GenerateStream(self, request, context):
        self.requests["inference"].append(request)
        self.time_remaining["inference"].append(context.time_remaining())
        token_ids, finish, usage = self._answer(request)
        answers = max(request.sampling.n, 1)
        usage.completion_tokens *= answers
        usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
        prompt = bytes(i for i in _prompt_ids(request) if i < 256).decode(errors="replace")
        try:
            for start in range(0, len(token_ids), CHUNK):
                if FAIL_MID_STREAM in prompt and start:
                    await abort(context, grpc.StatusCode.INTERNAL, "the model crashed", "MODEL_FAILED")
                if SLOW_STREAM in prompt:
                    await asyncio.sleep(0.2)
                if start // CHUNK < len(self.stream_pauses_s):
                    await asyncio.sleep(self.stream_pauses_s[start // CHUNK])
                for index in range(answers):
                    delta = common_pb2.Completion(index=index, token_ids=token_ids[start : start + CHUNK])
                    yield inference_pb2.GenerateStreamResponse(model=request.model, delta=delta)
            for index in range(answers):
                delta = common_pb2.Completion(index=index, finish_reason=finish)
                last = index == answers - 1
                yield inference_pb2.GenerateStreamResponse(
                    model=request.model, delta=delta, usage=usage if last else None
                )
        except asyncio.CancelledError:
            self.cancelled_streams += 1
            raise

    async def Postprocess(self, request, context):
        self.requests["postprocess"].append(request)
        return postprocess_pb2.PostprocessResponse(
            text=bytes(request.token_ids).decode(),
            verdict=common_pb2.SafetyVerdict(),
            finish_reason=request.finish_reason,
        )

    async def PostprocessStream(self, request_iterator, context):
        answers, ended = 1, set()
        async for request in request_iterator:
            self.requests["postprocess"].append(request)
            if request.context.request_id:
                answers = max(request.answers, 1)
            text = bytes(request.token_ids).decode()
            if request.finish_reason:
                ended.add(request.index)
                yield postprocess_pb2.PostprocessStreamResponse(
                    index=request.index,
                    text_delta=text,
                    finish_reason=request.finish_reason,
                    verdict=common_pb2.SafetyVerdict(),
                )
                if len(ended) == answers:
                    return
            else:
                yield postprocess_pb2.PostprocessStreamResponse(index=request.index, text_delta=text)
