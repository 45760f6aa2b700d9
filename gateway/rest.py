"""The OpenAI-compatible REST edge.

Every error leaves as an OpenAI error object. Bad parameters are 400 (as OpenAI answers them),
never FastAPI's default 422, so OpenAI's clients raise ``BadRequestError`` with ``param`` set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator, Mapping

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import keys_api, readiness
from gateway.errors import GatewayError, log_failure
from gateway.experiments import api as experiments_api
from gateway.guard import Guard
from gateway.keys_api import api_key
from gateway.metrics import DURATION, REQUESTS
from gateway.openai_format import (
    CHAT,
    COMPLETION,
    ResponseFormat,
    error_object,
    gateway_error_object,
    sse_events,
)
from gateway.openai_schema import ChatCompletionRequest, CompletionRequest, describe_validation_error
from gateway.pipeline import ChatStream, Pipeline
from gateway.settings import GatewaySettings
from gateway.tenancy import ApiKey
from mesh.catalog import AUTO_MODEL

log = logging.getLogger(__name__)

# Probes and scrapes would drown the traces.
_UNTRACED_URLS = "/healthz,/readyz,/metrics"


def create_app(settings: GatewaySettings, pipeline: Pipeline, guard: Guard | None = None) -> FastAPI:
    app = FastAPI(title="llmesh gateway", summary="OpenAI-compatible edge of the llmesh platform")
    app.state.settings = settings
    app.state.guard = guard or Guard(settings, pipeline)
    # Added last = outermost: observation also sees the 413s the size limit answers itself.
    app.add_middleware(_BodyLimit, max_bytes=settings.max_body_bytes, read_timeout_s=settings.body_read_timeout_s)
    app.add_middleware(_Observe)
    _add_error_handlers(app)
    started = int(time.time())

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        statuses = await readiness.check(settings, pipeline.channels)
        ready = readiness.is_ready(statuses)
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": statuses},
            status_code=200 if ready else 503,
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=[Depends(api_key)])
    async def models() -> dict:
        names = [model.name for model in settings.models] + [AUTO_MODEL]
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": started, "owned_by": "llmesh"} for name in names],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(
        body: ChatCompletionRequest, request: Request, key: ApiKey = Depends(api_key)
    ) -> Response:
        return await _answer(app.state.guard, key, body, CHAT, request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request, key: ApiKey = Depends(api_key)) -> Response:
        return await _answer(app.state.guard, key, body, COMPLETION, request)

    app.include_router(experiments_api.router(pipeline.experiments))
    app.include_router(keys_api.tenant_router())
    app.include_router(keys_api.admin_keys_router())

    # One span per request; a span per ASGI message would bury a stream's trace.
    FastAPIInstrumentor.instrument_app(app, excluded_urls=_UNTRACED_URLS, exclude_spans=["send", "receive"])
    return app


async def _answer(
    guard: Guard, key: ApiKey, body: ChatCompletionRequest | CompletionRequest, fmt: ResponseFormat, request: Request
) -> Response:
    chat_input = experiments_api.with_request_headers(body.to_input(), request.headers)
    if not body.stream:
        result = await guard.chat(key, chat_input)
        headers = _llmesh_headers(result.id, result.model, result.route_reason, result.experiments)
        return JSONResponse(fmt.result(result), headers=headers)
    stream = await guard.stream(key, chat_input)
    return _EventStream(stream, sse_events(stream, fmt, body.include_usage))


def _llmesh_headers(
    request_id: str, model: str, route_reason: str, experiments: Mapping[str, str]
) -> dict[str, str]:
    headers = {"x-request-id": request_id, "x-llmesh-model": model, **experiments_api.assignment_headers(experiments)}
    if route_reason:
        # Header values must be one line of latin-1; a reason is free text from the router.
        headers["x-llmesh-route-reason"] = " ".join(route_reason.split()).encode("ascii", "replace").decode()
    return headers


class _EventStream(StreamingResponse):
    """An SSE response that releases the pipeline stream however the response ends: the
    body iterator's own clean-up never runs if the client leaves before its first step."""

    def __init__(self, stream: ChatStream, events: AsyncIterator[str]) -> None:
        headers = {
            **_llmesh_headers(stream.id, stream.model, stream.route_reason, stream.experiments),
            "cache-control": "no-cache",
        }
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.stream.aclose()


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, error: GatewayError) -> JSONResponse:
        log_failure(error)
        return JSONResponse(gateway_error_object(error), status_code=error.http_status, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        message, param = describe_validation_error(error.errors())
        return JSONResponse(error_object(message, "invalid_request_error", param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        error_type = "invalid_request_error" if error.status_code < 500 else "server_error"
        return JSONResponse(
            error_object(str(error.detail), error_type), status_code=error.status_code, headers=error.headers
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(error_object("The server had an error; please retry.", "server_error"), status_code=500)


def _too_large_message(max_bytes: int) -> str:
    return f"The request body is larger than {max_bytes} bytes."


def _slow_body_message(timeout_s: float) -> str:
    return f"The request body did not arrive in full within {timeout_s:g} s (is Content-Length larger than the body?)."


class _BodyLimit:
    """413 for a body over the limit: from Content-Length before reading, and while reading
    for bodies that declare no length (chunked), so an oversized body is never held whole.
    408 when the next part of the body does not arrive within ``read_timeout_s``."""

    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            body = error_object(_too_large_message(self.max_bytes), "invalid_request_error")
            await JSONResponse(body, status_code=413)(scope, receive, send)
            return
        received = 0
        body_complete = False

        async def limited_receive() -> Message:
            nonlocal received, body_complete
            if body_complete:
                # After the body, receive() waits for the disconnect for as long as a stream
                # runs: no timeout applies to that.
                return await receive()
            try:
                # asyncio.timeout, not wait_for: wait_for reads in a task of its own, and then a
                # request whose handling checks for a disconnect (a receive in an already
                # cancelled scope) never completed.
                async with asyncio.timeout(self.read_timeout_s):
                    message = await receive()
            except TimeoutError:
                # The rest of the body will never be read, so the connection cannot be reused.
                raise HTTPException(
                    408, _slow_body_message(self.read_timeout_s), headers={"connection": "close"}
                ) from None
            body_complete = message["type"] != "http.request" or not message.get("more_body", False)
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # FastAPI passes an HTTPException met while reading the body on to the
                # exception handlers; anything else it would turn into a 400.
                raise HTTPException(413, _too_large_message(self.max_bytes))
            return message

        await self.app(scope, limited_receive, send)


class _Observe:
    """Request metrics and an access log line by route template, and ``x-trace-id`` on every
    response (the OpenTelemetry middleware outside this one has made the request span current)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        span_context = trace.get_current_span().get_span_context()
        status = 500

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if span_context.is_valid:
                    MutableHeaders(scope=message).append("x-trace-id", format(span_context.trace_id, "032x"))
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            # The route template, not the path, keeps label values bounded.
            route = getattr(scope.get("route"), "path", "unmatched")
            elapsed = time.perf_counter() - started
            REQUESTS.labels(route, str(status)).inc()
            DURATION.labels(route, str(status)).observe(elapsed)
            log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 1),
                },
            )


class RestServer(uvicorn.Server):
    """uvicorn without its own signal handling: it would take SIGTERM/SIGINT for itself (and
    raise them again when it stops), while the gateway process stops both edges together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
