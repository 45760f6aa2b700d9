"""What every edge does around the pipeline for a tenant: authenticate the API key, admit the
request under the tenant's rate limits, and once it has finished charge its tokens and append
its audit record. Shadow requests of A/B tests call the pipeline directly, so they are
neither billed nor audited."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncGenerator, Sequence

import grpc

from gateway.accounting import Accounting
from gateway.audit import AuditLog, Outcome
from gateway.errors import GatewayError
from gateway.metrics import observe_finished
from gateway.pipeline import Pipeline
from gateway.records import (
    ChatInput,
    ChatResult,
    ChatStream,
    EmbedResult,
    ModerationResult,
    StreamChunk,
    finish_reason_name,
)
from gateway.settings import GatewaySettings
from gateway.tenancy import ApiKey, Tenancy
from llmesh.common.v1 import common_pb2


class ContentBlocked(GatewayError):
    """A refusal as an error, when LLMESH_SAFETY_BLOCK_AS_ERROR is set."""

    http_status = 400
    error_type = "invalid_request_error"
    reason = "CONTENT_FILTER"

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, verdict: common_pb2.SafetyVerdict) -> None:
        super().__init__(verdict.message or "The content was blocked.", metadata={"rule": verdict.rule})


class Guard:
    """One per gateway process, shared by its edges (like the pipeline)."""

    def __init__(self, settings: GatewaySettings, pipeline: Pipeline, quota_reserve: float = 0.0) -> None:
        self.settings = settings
        self.pipeline = pipeline
        # The share of the tenant's rate-limit buckets this guard's requests must leave to
        # others (the batch edge leaves room for interactive requests).
        self.quota_reserve = quota_reserve
        self.tenancy = Tenancy(settings)
        self.audit = AuditLog(settings)
        self.accounting = Accounting(
            self.tenancy,
            self.audit,
            settings.accounting_max_pending,
            settings.audit_dir,
            settings.response_cache_charge_hits,
        )

    async def close(self) -> None:
        # Every finished request is charged and audited before Redis is let go.
        await self.accounting.close()
        await self.tenancy.close()
        await self.audit.close()

    async def authenticate(self, authorization: str | None) -> ApiKey:
        return await self.tenancy.authenticate(authorization)

    async def chat(self, key: ApiKey, request: ChatInput) -> ChatResult:
        request = await self._admit(key, request)
        started = time.perf_counter()
        try:
            result = await self.pipeline.chat(request)
        except GatewayError as error:
            await self._finished(_failed(request, error, started))
            raise
        except asyncio.CancelledError:
            # The client left (the REST edge cancels a unary request whose connection closed):
            # the engine stopped for it, and the audit trail says so.
            await asyncio.shield(self._finished(_failed(request, CLIENT_DISCONNECTED, started)))
            raise
        await self._finished(
            _answered(
                request,
                result,
                finish_reason=result.finish_reason,
                verdict=result.verdict,
                usage=result.usage,
                output=result.text,
                started=started,
            )
        )
        if self.settings.safety_block_as_error and result.verdict.blocked:
            raise ContentBlocked(result.verdict)
        return result

    async def stream(self, key: ApiKey, request: ChatInput) -> ChatStream:
        request = await self._admit(key, request)
        started = time.perf_counter()
        try:
            stream = await self.pipeline.stream(request)
        except GatewayError as error:
            await self._finished(_failed(request, error, started))
            raise
        chunks = self._observed(stream, stream.chunks, request, started)
        if self.settings.safety_block_as_error:
            # A refused prompt is known before anything was sent: answer it as an error.
            # A block in mid-stream cannot be: the 200 and the first chunks are out already.
            first = await anext(chunks)
            if first.finish_reason and first.verdict is not None and first.verdict.blocked:
                await stream.aclose()
                raise ContentBlocked(first.verdict)
            chunks = _prepend(first, chunks)
        stream.chunks = chunks
        return stream

    async def embed(self, key: ApiKey, model: str, inputs: Sequence[str], user: str = "") -> EmbedResult:
        await self.tenancy.admit(key.tenant)
        started = time.perf_counter()
        try:
            result = await self.pipeline.embed(model, inputs, key.tenant, user)
        except GatewayError as error:
            await self._finished(
                Outcome(
                    request_id="",
                    tenant=key.tenant,
                    requested_model=model,
                    status=error.reason,
                    latency_ms=(time.perf_counter() - started) * 1000,
                    prompt="\n".join(inputs),
                )
            )
            raise
        await self._finished(
            Outcome(
                request_id=result.id,
                tenant=key.tenant,
                requested_model=model,
                model=result.model,
                prompt_tokens=result.usage.prompt_tokens,
                latency_ms=(time.perf_counter() - started) * 1000,
                prompt="\n".join(inputs),
            )
        )
        return result

    async def moderate(self, key: ApiKey, inputs: Sequence[str]) -> ModerationResult:
        """Checking text is not generating it: admitted under the rate limits, charged nothing."""
        await self.tenancy.admit(key.tenant)
        return await self.pipeline.moderate(inputs, key.tenant)

    async def _admit(self, key: ApiKey, request: ChatInput) -> ChatInput:
        await self.tenancy.admit(key.tenant, self.quota_reserve)
        return dataclasses.replace(request, tenant=key.tenant)

    async def _observed(
        self, stream: ChatStream, chunks: AsyncGenerator[StreamChunk, None], request: ChatInput, started: float
    ) -> AsyncGenerator[StreamChunk, None]:
        text: list[str] = []
        # The first blocking verdict of any answer, else the last answer's.
        verdict: common_pb2.SafetyVerdict | None = None
        try:
            async for chunk in chunks:
                if chunk.index == 0:
                    text.append(chunk.text)
                if chunk.verdict is not None and (verdict is None or not verdict.blocked):
                    verdict = chunk.verdict
                # The stream's last chunk carries the usage of every answer.
                if chunk.usage is not None:
                    usage = chunk.usage
                    await self._finished(
                        _answered(
                            request,
                            stream,
                            finish_reason=chunk.finish_reason,
                            verdict=verdict,
                            usage=usage,
                            output="".join(text),
                            started=started,
                        )
                    )
                yield chunk
        except GatewayError as error:
            await self._finished(dataclasses.replace(_failed(request, error, started), request_id=stream.id))
            raise
        finally:
            await chunks.aclose()

    async def _finished(self, outcome: Outcome) -> None:
        # Charged and audited in the background (gateway/accounting.py): the answer does not
        # wait for Redis, and a failure there never turns it into an error.
        observe_finished(outcome)
        await self.accounting.record(outcome)


def _answered(
    request: ChatInput,
    answer: ChatResult | ChatStream,
    *,
    finish_reason: common_pb2.FinishReason,
    verdict: common_pb2.SafetyVerdict | None,
    usage: common_pb2.Usage,
    output: str,
    started: float,
) -> Outcome:
    """The one record of an answered chat request, unary or streamed: what audit and usage keep."""
    return Outcome(
        request_id=answer.id,
        tenant=request.tenant,
        requested_model=request.model,
        model=answer.model,
        route_reason=answer.route_reason,
        finish_reason=finish_reason_name(finish_reason),
        verdict=verdict,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        latency_ms=(time.perf_counter() - started) * 1000,
        experiments=dict(answer.experiments),
        prompt=_prompt_text(request),
        output=output,
        cache=answer.cache,
    )


# The audit status of a request whose client left before its answer.
CLIENT_DISCONNECTED = "CLIENT_DISCONNECTED"


def _failed(request: ChatInput, error: GatewayError | str, started: float) -> Outcome:
    return Outcome(
        request_id="",
        tenant=request.tenant,
        requested_model=request.model,
        status=error if isinstance(error, str) else error.reason,
        latency_ms=(time.perf_counter() - started) * 1000,
        prompt=_prompt_text(request),
    )


def _prompt_text(request: ChatInput) -> str:
    if request.prompt is not None:
        return request.prompt
    return "\n".join(message.content for message in request.messages)


async def _prepend(first: StreamChunk, rest: AsyncGenerator[StreamChunk, None]) -> AsyncGenerator[StreamChunk, None]:
    try:
        yield first
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()
