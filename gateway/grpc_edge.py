"""The gRPC edge: GatewayService over the same pipeline as the REST edge."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

import grpc

from gateway import readiness
from gateway.errors import GatewayError, log_failure
from gateway.experiments.api import assignment_headers
from gateway.guard import Guard
from gateway.load import InteractiveLoad
from gateway.models import catalog_entries
from gateway.pipeline import Pipeline
from gateway.records import ChatInput
from gateway.response_cache import CACHE_HEADER
from gateway.settings import GatewaySettings
from gateway.tenancy import ApiKey
from llmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from mesh.catalog import AUTO_MODEL
from mesh.errors import abort


class GatewayService(gateway_pb2_grpc.GatewayServiceServicer):
    """A mesh.server.MeshService; errors leave as status codes with ErrorInfo details."""

    service_names: Sequence[str] = (gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name,)

    def __init__(
        self,
        settings: GatewaySettings,
        pipeline: Pipeline,
        guard: Guard | None = None,
        load: InteractiveLoad | None = None,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.guard = guard or Guard(settings, pipeline)
        # Counts interactive calls in flight, for batch workers to yield to.
        self.load = load

    def register(self, server: grpc.aio.Server) -> None:
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(self, server)

    async def ready(self) -> bool:
        return readiness.serves(await readiness.check(self.settings, self.pipeline.channels), self.settings)

    async def close(self) -> None:
        await self.guard.close()
        await self.pipeline.close()

    async def _key(self, context: grpc.aio.ServicerContext) -> ApiKey:
        """The caller's key from the ``authorization: Bearer <key>`` metadata."""
        return await self.guard.authenticate(_metadata(context, "authorization"))

    def _in_flight(self) -> contextlib.AbstractContextManager:
        return self.load.request() if self.load is not None else contextlib.nullcontext()

    async def Chat(
        self, request: gateway_pb2.ChatRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ChatResponse:
        try:
            with self._in_flight():
                result = await self.guard.chat(await self._key(context), _input(request, context))
        except GatewayError as error:
            await _abort(context, error)
        await _send_assignments(context, result.experiments, result.cache)
        return gateway_pb2.ChatResponse(
            id=result.id,
            model=result.model,
            text=result.text,
            finish_reason=result.finish_reason,
            usage=result.usage,
            route_reason=result.route_reason,
            verdict=result.verdict,
            choices=[
                gateway_pb2.Choice(
                    index=choice.index,
                    text=choice.text,
                    finish_reason=choice.finish_reason,
                    logprobs=choice.logprobs,
                    tool_calls=choice.tool_calls,
                    verdict=choice.verdict,
                )
                for choice in result.choices
            ],
        )

    async def ChatStream(
        self, request: gateway_pb2.ChatStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.ChatStreamResponse]:
        try:
            with self._in_flight():
                stream = await self.guard.stream(await self._key(context), _input(request, context))
                try:
                    await _send_assignments(context, stream.experiments, stream.cache)
                    async for chunk in stream:
                        yield gateway_pb2.ChatStreamResponse(
                            id=stream.id,
                            model=stream.model,
                            index=chunk.index,
                            text_delta=chunk.text,
                            logprobs=chunk.logprobs,
                            tool_calls=chunk.tool_calls,
                            finish_reason=chunk.finish_reason,
                            usage=chunk.usage,
                            route_reason=stream.route_reason,
                            verdict=chunk.verdict,
                        )
                finally:
                    await stream.aclose()
        except GatewayError as error:
            await _abort(context, error)

    async def Embed(
        self, request: gateway_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.EmbedResponse:
        try:
            result = await self.guard.embed(await self._key(context), request.model, list(request.inputs), request.user)
        except GatewayError as error:
            await _abort(context, error)
        return gateway_pb2.EmbedResponse(
            model=result.model,
            embeddings=[gateway_pb2.Embedding(values=vector) for vector in result.vectors],
            usage=result.usage,
        )

    async def Moderate(
        self, request: gateway_pb2.ModerateRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ModerateResponse:
        try:
            moderated = await self.guard.moderate(await self._key(context), list(request.inputs))
        except GatewayError as error:
            await _abort(context, error)
        return gateway_pb2.ModerateResponse(
            id=moderated.id,
            results=[
                gateway_pb2.ModerationResult(
                    flagged=r.flagged, categories=r.categories, category_scores=r.category_scores
                )
                for r in moderated.results
            ],
        )

    async def ListModels(
        self, request: gateway_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ListModelsResponse:
        try:
            await self._key(context)
        except GatewayError as error:
            await _abort(context, error)
        return gateway_pb2.ListModelsResponse(
            models=[
                gateway_pb2.Model(
                    id=entry.id,
                    owned_by=entry.owned_by,
                    kind=entry.kind,
                    context_length=entry.context_length,
                    price_input_per_1k=entry.price_input_per_1k,
                    price_output_per_1k=entry.price_output_per_1k,
                    dimensions=entry.dimensions,
                )
                for entry in catalog_entries(self.settings)
            ]
        )


async def _send_assignments(context: grpc.aio.ServicerContext, experiments: dict[str, str], cache: str = "") -> None:
    """The A/B assignments and the response cache's status as initial metadata, named as the
    REST edge's headers."""
    metadata = assignment_headers(experiments)
    if cache:
        metadata[CACHE_HEADER] = cache
    if metadata:
        await context.send_initial_metadata(tuple(metadata.items()))


def _metadata(context: grpc.aio.ServicerContext, name: str) -> str | None:
    return next((value for key, value in context.invocation_metadata() or () if key == name), None)


def _input(
    request: gateway_pb2.ChatRequest | gateway_pb2.ChatStreamRequest, context: grpc.aio.ServicerContext
) -> ChatInput:
    return ChatInput(
        use_cache="no-cache" not in (_metadata(context, "cache-control") or "").lower(),
        messages=list(request.messages),
        model=request.model or AUTO_MODEL,
        sampling=request.sampling,
        user=request.user,
        tools=list(request.tools),
        tool_choice=request.tool_choice,
    )


async def _abort(context: grpc.aio.ServicerContext, error: GatewayError) -> None:
    log_failure(error)
    metadata = dict(error.metadata)
    if error.param:
        metadata["param"] = error.param
    await abort(context, error.grpc_code, error.message, error.reason, **metadata)
