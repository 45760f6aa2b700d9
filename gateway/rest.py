"""The OpenAI-compatible REST edge.

Every error leaves as an OpenAI error object. Bad parameters are 400 (as OpenAI answers them),
never FastAPI's default 422, so OpenAI's clients raise ``BadRequestError`` with ``param`` set.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Iterator, Mapping

import numpy as np
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import anthropic_api, keys_api, models_admin, readiness, responses_api
from gateway.batch import api as batch_api
from gateway.batch.api import MULTIPART_OVERHEAD_BYTES, Batches
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    RedisUnavailable,
    injected_error,
    log_failure,
)
from gateway.experiments import api as experiments_api
from gateway.guard import Guard
from gateway.keys_api import api_key
from gateway.load import InteractiveLoad
from gateway.metrics import DURATION, IN_FLIGHT, REQUESTS
from gateway.models import CatalogEntry, catalog_entries
from gateway.openai_format import (
    EventStream,
    FastJSONResponse,
    ResponseFormat,
    error_object,
    gateway_error_object,
    sse_events,
)
from gateway.openai_schema import (
    MODERATION_MODEL,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ModerationRequest,
    describe_validation_error,
)
from gateway.pipeline import Pipeline
from gateway.records import ChatResult
from gateway.response_cache import CACHE_HEADER
from gateway.settings import GatewaySettings
from gateway.tenancy import ApiKey
from mesh import deadlines, faults, shedding
from mesh.faults import FaultInjector
from mesh.shedding import Admission

log = logging.getLogger(__name__)

# Probes and scrapes would drown the traces.
_UNTRACED_URLS = "/healthz,/readyz,/metrics"


def create_app(
    settings: GatewaySettings, pipeline: Pipeline, guard: Guard | None = None, load: InteractiveLoad | None = None
) -> FastAPI:
    """The REST edge; ``load`` counts its interactive requests for batch workers to yield to."""
    app = FastAPI(title="llmesh gateway", summary="OpenAI-compatible edge of the llmesh platform")
    app.state.settings = settings
    app.state.guard = guard or Guard(settings, pipeline)
    app.state.batches = Batches(settings)
    # Set on SIGTERM (mesh.server.drain): /readyz answers 503 while in-flight requests finish.
    app.state.draining = False
    app.state.inference_channel = pipeline.channels["inference"]
    if load is not None:
        app.add_middleware(_InteractiveInFlight, load=load)
    # Added last = outermost: observation also sees the 413s the size limit answers itself.
    app.add_middleware(
        _BodyLimit,
        max_bytes=settings.max_body_bytes,
        path_limits={"/v1/files": settings.files_max_bytes + MULTIPART_OVERHEAD_BYTES},
        read_timeout_s=settings.body_read_timeout_s,
    )
    if settings.fault_injection_enabled:
        app.add_middleware(_Faults, injector=FaultInjector(settings))
    # Outside the body limit: an overloaded gateway refuses before reading the body.
    app.add_middleware(
        _Shed,
        admission=Admission(settings.max_concurrent_requests, settings.max_queued_requests),
        max_wait_s=settings.default_deadline_s,
    )
    app.add_middleware(_Observe)
    _add_error_handlers(app)
    started = int(time.time())

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if app.state.draining:
            return JSONResponse({"status": "draining", "checks": {}}, status_code=503)
        statuses = await readiness.check(settings, pipeline.channels)
        ready = readiness.serves(statuses, settings)
        # Degraded: serving, without what a dependency away (Redis, failing open) would give.
        status = ("ready" if readiness.is_ready(statuses) else "degraded") if ready else "not ready"
        return JSONResponse({"status": status, "checks": statuses}, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=[Depends(api_key)])
    async def models() -> dict:
        return {"object": "list", "data": [_model_object(model, started) for model in catalog_entries(settings)]}

    @app.get("/v1/models/{model_id}", dependencies=[Depends(api_key)])
    async def model(model_id: str) -> dict:
        entry = next((entry for entry in catalog_entries(settings) if entry.id == model_id), None)
        if entry is None:
            raise ModelNotFound(model_id)
        return _model_object(entry, started)

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, key: ApiKey = Depends(api_key)) -> JSONResponse:
        spec = next((m for m in settings.embedding_models if m.name == body.model), None)
        if spec is None:
            raise ModelNotFound(body.model)
        if body.dimensions is not None and body.dimensions != spec.dimensions:
            raise InvalidRequest(
                f"{spec.name} answers {spec.dimensions} dimensions; other sizes are not supported.", param="dimensions"
            )
        result = await app.state.guard.embed(key, body.model, body.input, body.user or "")
        data = [
            {"object": "embedding", "index": index, "embedding": _encoded(vector, body.encoding_format)}
            for index, vector in enumerate(result.vectors)
        ]
        usage = {"prompt_tokens": result.usage.prompt_tokens, "total_tokens": result.usage.total_tokens}
        headers = {"x-request-id": result.id, "x-llmesh-model": result.model}
        return JSONResponse({"object": "list", "data": data, "model": result.model, "usage": usage}, headers=headers)

    @app.post("/v1/moderations")
    async def moderations(body: ModerationRequest, key: ApiKey = Depends(api_key)) -> JSONResponse:
        moderated = await app.state.guard.moderate(key, body.input)
        results = [
            {
                "flagged": result.flagged,
                "categories": dict(sorted(result.categories.items())),
                "category_scores": dict(sorted(result.category_scores.items())),
                "category_applied_input_types": {name: ["text"] for name in sorted(result.categories)},
            }
            for result in moderated.results
        ]
        return JSONResponse({"id": moderated.id, "model": MODERATION_MODEL, "results": results})

    @app.post("/v1/chat/completions")
    async def chat_completions(
        body: ChatCompletionRequest, request: Request, key: ApiKey = Depends(api_key)
    ) -> Response:
        return await _answer(app.state.guard, key, body, body.answer_format(), request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request, key: ApiKey = Depends(api_key)) -> Response:
        return await _answer(app.state.guard, key, body, body.answer_format(), request)

    app.include_router(batch_api.files_router())
    app.include_router(batch_api.batches_router())
    app.include_router(responses_api.router(settings.responses_ttl_s))
    app.include_router(anthropic_api.router())
    app.include_router(experiments_api.router(pipeline.experiments))
    app.include_router(keys_api.tenant_router())
    app.include_router(keys_api.admin_keys_router())
    app.include_router(models_admin.models_admin_router())

    # One span per request; a span per ASGI message would bury a stream's trace.
    FastAPIInstrumentor.instrument_app(app, excluded_urls=_UNTRACED_URLS, exclude_spans=["send", "receive"])
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema
    return app


# What the API routes answer besides 200, all as error objects (OpenAI's; Anthropic's on
# /v1/messages): never FastAPI's default 422.
_ERROR_STATUSES = {
    "400": "Invalid request: a parameter is malformed, out of range or not supported (named in error.param)",
    "401": "No valid API key",
    "404": "Unknown model (or stored response)",
    "413": "Request body too large",
    "429": "Rate limit or budget exhausted",
    "500": "Server error",
    "502": "An upstream service failed",
    "503": "An upstream service is unavailable",
    "504": "An upstream service did not answer in time",
}
_ERROR_SCHEMA = {
    "title": "ErrorResponse",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def _openapi(app: FastAPI) -> dict:
    """FastAPI's document, with the errors the server really answers."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    document = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["ErrorResponse"] = _ERROR_SCHEMA
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            if path.startswith("/v1/"):
                for status, description in _ERROR_STATUSES.items():
                    responses.setdefault(
                        status,
                        {
                            "description": description,
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
                        },
                    )
    for unused in ("HTTPValidationError", "ValidationError"):
        if unused in schemas and unused not in json.dumps(document["paths"]):
            del schemas[unused]
    app.openapi_schema = document
    return document


def _encoded(vector, encoding_format: str) -> list[float] | str:
    """A vector as floats, or as base64 of its little-endian float32 bytes (OpenAI's clients
    ask for this by default and decode it)."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return list(vector)


def _model_object(entry: CatalogEntry, created: int) -> dict:
    """OpenAI's model object, with what a caller needs to choose one: kind, context, prices."""
    body = {"id": entry.id, "object": "model", "created": created, "owned_by": entry.owned_by, "kind": entry.kind}
    if entry.context_length:
        body["context_length"] = entry.context_length
    if entry.dimensions:
        body["dimensions"] = entry.dimensions
    if entry.kind != "router":
        body["pricing"] = {
            "input_per_1k_tokens": entry.price_input_per_1k,
            "output_per_1k_tokens": entry.price_output_per_1k,
        }
    return body


async def _answer(
    guard: Guard, key: ApiKey, body: ChatCompletionRequest | CompletionRequest, fmt: ResponseFormat, request: Request
) -> Response:
    chat_input = experiments_api.with_request_headers(body.to_input(), request.headers)
    no_cache = "no-cache" in request.headers.get("cache-control", "").lower()
    chat_input = dataclasses.replace(chat_input, use_cache=not no_cache)
    if not body.stream:
        result = await _unless_disconnected(request, guard.chat(key, chat_input))
        if result is None:
            # Nobody is left to read it; the access log says 499 (client closed request).
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        headers = _llmesh_headers(result.id, result.model, result.route_reason, result.experiments, result.cache)
        return FastJSONResponse(fmt.result(result), headers=headers)
    stream = await guard.stream(key, chat_input)
    headers = _llmesh_headers(stream.id, stream.model, stream.route_reason, stream.experiments, stream.cache)
    return EventStream(stream, sse_events(stream, fmt, body.include_usage), headers)


CLIENT_CLOSED_REQUEST = 499


async def _unless_disconnected(request: Request, answer: Awaitable[ChatResult]) -> ChatResult | None:
    """A unary answer, cancelled when its client disconnects first: the cancellation reaches
    every call the pipeline is making, Triton's generation included (a stream's is cancelled
    when its response stops being read). The body has been read, so the next receive() waits
    for the disconnect. None when the client left."""
    answering = asyncio.ensure_future(answer)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watching = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait([answering, watching], return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
    if not answering.done():
        answering.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await answering
        return None
    return answering.result()


def _llmesh_headers(
    request_id: str, model: str, route_reason: str, experiments: Mapping[str, str], cache: str = ""
) -> dict[str, str]:
    headers = {"x-request-id": request_id, "x-llmesh-model": model, **experiments_api.assignment_headers(experiments)}
    if cache:
        headers[CACHE_HEADER] = cache
    if route_reason:
        # Header values must be one line of latin-1; a reason is free text from the router.
        headers["x-llmesh-route-reason"] = " ".join(route_reason.split()).encode("ascii", "replace").decode()
    return headers


def _error(request: Request, body: dict, status: int, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """An OpenAI error object, or Anthropic's on its Messages endpoint."""
    if request.url.path == anthropic_api.PATH:
        body = anthropic_api.error_body(status, body["error"]["message"])
    return JSONResponse(body, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, error: GatewayError) -> JSONResponse:
        log_failure(error)
        return _error(request, gateway_error_object(error), error.http_status, error.headers)

    @app.exception_handler(RedisError)
    async def redis_error(request: Request, error: RedisError) -> JSONResponse:
        # What needs Redis and did not wrap its failure itself (keys, stored objects).
        return await gateway_error(
            request, RedisUnavailable(f"Redis is unavailable ({type(error).__name__}); please retry.")
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        message, param = describe_validation_error(error.errors())
        return _error(request, error_object(message, "invalid_request_error", param), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        error_type = "invalid_request_error" if error.status_code < 500 else "server_error"
        return _error(request, error_object(str(error.detail), error_type), error.status_code, error.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _error(request, error_object("The server had an error; please retry.", "server_error"), 500)


def _too_large_message(max_bytes: int) -> str:
    return f"The request body is larger than {max_bytes} bytes."


def _slow_body_message(timeout_s: float) -> str:
    return f"The request body did not arrive in full within {timeout_s:g} s (is Content-Length larger than the body?)."


class _BodyLimit:
    """413 for a body over the limit: from Content-Length before reading, and while reading
    for bodies that declare no length (chunked), so an oversized body is never held whole.
    File uploads have a limit of their own (``path_limits``). 408 when the next part of the body
    does not arrive within ``read_timeout_s``."""

    def __init__(self, app: ASGIApp, max_bytes: int, path_limits: Mapping[str, int], read_timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.path_limits = dict(path_limits)
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.path_limits.get(scope["path"], self.max_bytes)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            body = error_object(_too_large_message(max_bytes), "invalid_request_error")
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
            if received > max_bytes:
                # FastAPI passes an HTTPException met while reading the body on to the
                # exception handlers; anything else it would turn into a 400.
                raise HTTPException(413, _too_large_message(max_bytes))
            return message

        await self.app(scope, limited_receive, send)


class _Faults:
    """Fault injection at the REST edge (mesh.faults): the gateway's own fault, and the fault
    header (with the admin key) passed on to the services; refused without the key (403)."""

    def __init__(self, app: ASGIApp, injector: FaultInjector) -> None:
        self.app = app
        self.injector = injector

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        header, key = headers.get(faults.FAULT_HEADER), headers.get(faults.ADMIN_KEY_HEADER)
        try:
            fault = self.injector.fault_for(header, key)
        except faults.FaultRefused as error:
            await JSONResponse(error_object(str(error), "permission_error"), status_code=403)(scope, receive, send)
            return
        self.injector.forward(header, key)
        code = await faults.inject(fault)
        if code is not None:
            failure = injected_error(code, "Fault injected into the gateway.")
            await JSONResponse(gateway_error_object(failure), status_code=failure.http_status, headers=failure.headers)(
                scope, receive, send
            )
            return
        await self.app(scope, receive, send)


class _Shed:
    """Load shedding of the generation endpoints (mesh.shedding): at capacity, 429 with
    Retry-After at once. Every REST caller is interactive (batch work runs in the batch worker)."""

    _PATHS = frozenset(
        {
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
            "/v1/moderations",
            "/v1/responses",
            anthropic_api.PATH,
        }
    )

    def __init__(self, app: ASGIApp, admission: Admission, max_wait_s: float) -> None:
        self.app = app
        self.admission = admission
        # A request waits for a slot at most this long (the unary deadline, which counts from
        # its arrival, so a unary request that waited it out could only time out afterwards).
        self.max_wait_s = max_wait_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self._PATHS:
            await self.app(scope, receive, send)
            return
        deadlines.mark_arrival()
        try:
            async with asyncio.timeout(self.max_wait_s):
                await self.admission.acquire()
        except (shedding.Overloaded, TimeoutError):
            error = Overloaded(
                f"The gateway is at capacity; retry in {shedding.RETRY_AFTER_S} s.", metadata={"service": "gateway"}
            )
            body = gateway_error_object(error)
            if scope["path"] == anthropic_api.PATH:
                body = anthropic_api.error_body(error.http_status, error.message)
            await JSONResponse(body, status_code=error.http_status, headers=error.headers)(scope, receive, send)
            return
        try:
            # Streams hold their slot to their last byte.
            await self.app(scope, receive, send)
        finally:
            self.admission.release()


class _InteractiveInFlight:
    """Counts the generation requests in flight, streams to their last byte, for batch workers
    to yield to (gateway/load.py)."""

    _PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})

    def __init__(self, app: ASGIApp, load: InteractiveLoad) -> None:
        self.app = app
        self.load = load

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self._PATHS:
            await self.app(scope, receive, send)
            return
        with self.load.request():
            await self.app(scope, receive, send)


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

        IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, observed_send)
        finally:
            IN_FLIGHT.dec()
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


class RestEdge:
    """The REST server as a companion of the gateway's gRPC server (mesh.server.serve): drained
    with it, in-flight requests and streams finishing within uvicorn's graceful timeout."""

    def __init__(self, config: uvicorn.Config) -> None:
        self.server = RestServer(config)

    async def run(self) -> None:
        await self.server.serve()

    async def drain(self, grace_s: float) -> None:
        # uvicorn closes its listeners and idle connections, and waits for the requests in
        # flight for its timeout_graceful_shutdown (the gateway sets it to grace_s).
        self.server.should_exit = True
