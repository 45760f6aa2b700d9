"""The gRPC edge: GatewayService over the same pipeline as the REST edge."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from gateway import readiness
from gateway.errors import GatewayError, log_failure
from gateway.pipeline import ChatInput, Pipeline
from gateway.settings import GatewaySettings
from llmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from mesh.catalog import AUTO_MODEL
from mesh.errors import abort


class GatewayService(gateway_pb2_grpc.GatewayServiceServicer):
    """A mesh.server.MeshService; errors leave as status codes with ErrorInfo details."""

    service_names = [gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name]

    def __init__(self, settings: GatewaySettings, pipeline: Pipeline) -> None:
        self.settings = settings
        self.pipeline = pipeline

    def register(self, server: grpc.aio.Server) -> None:
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(self, server)

    async def ready(self) -> bool:
        return readiness.is_ready(await readiness.check(self.settings, self.pipeline.channels))

    async def close(self) -> None:
        await self.pipeline.close()

    async def Chat(
        self, request: gateway_pb2.ChatRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ChatResponse:
        try:
            result = await self.pipeline.chat(_input(request))
        except GatewayError as error:
            await _abort(context, error)
        return gateway_pb2.ChatResponse(
            id=result.id,
            model=result.model,
            text=result.text,
            finish_reason=result.finish_reason,
            usage=result.usage,
            route_reason=result.route_reason,
            verdict=result.verdict,
        )

    async def ChatStream(
        self, request: gateway_pb2.ChatStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.ChatStreamResponse]:
        try:
            stream = await self.pipeline.stream(_input(request))
            try:
                async for chunk in stream:
                    yield gateway_pb2.ChatStreamResponse(
                        id=stream.id,
                        model=stream.model,
                        text_delta=chunk.text,
                        finish_reason=chunk.finish_reason,
                        usage=chunk.usage,
                        route_reason=stream.route_reason,
                        verdict=chunk.verdict,
                    )
            finally:
                await stream.aclose()
        except GatewayError as error:
            await _abort(context, error)


def _input(request: gateway_pb2.ChatRequest | gateway_pb2.ChatStreamRequest) -> ChatInput:
    return ChatInput(
        messages=list(request.messages),
        model=request.model or AUTO_MODEL,
        sampling=request.sampling,
        user=request.user,
    )


async def _abort(context: grpc.aio.ServicerContext, error: GatewayError) -> None:
    log_failure(error)
    metadata = dict(error.metadata)
    if error.param:
        metadata["param"] = error.param
    await abort(context, error.grpc_code, error.message, error.reason, **metadata)
