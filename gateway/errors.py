"""The gateway's typed errors, and the one table that maps them to gRPC and HTTP.

Both edges raise and render the same classes: the gRPC edge aborts with ``grpc_code`` and an
ErrorInfo carrying ``reason``; the REST edge answers ``http_status`` with an OpenAI error object
whose ``type`` is ``error_type`` and whose ``code`` is the reason in lower case.
"""

from __future__ import annotations

import logging
from typing import TypedDict, Unpack

import grpc

from mesh.errors import error_info
from mesh.faults import FAULT_INJECTED
from mesh.shedding import OVERLOADED, RETRY_AFTER_S

log = logging.getLogger(__name__)


class GatewayError(Exception):
    grpc_code = grpc.StatusCode.INTERNAL
    http_status = 500
    error_type = "server_error"
    reason = "INTERNAL"
    # How an upstream failure of this kind is told to the caller.
    phrase = "failed"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        param: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason:
            self.reason = reason
        self.param = param
        self.metadata = dict(metadata or {})
        # What the upstream said, for the logs only: it may name internal addresses.
        self.upstream_message = ""

    @property
    def code(self) -> str:
        return self.reason.lower()

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers the REST edge adds to the error response."""
        return {}


class InvalidRequest(GatewayError):
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400
    error_type = "invalid_request_error"
    reason = "INVALID_REQUEST"


class NotFound(GatewayError):
    """An object that does not exist, or is another tenant's (the two are never told apart)."""

    grpc_code = grpc.StatusCode.NOT_FOUND
    http_status = 404
    error_type = "invalid_request_error"
    reason = "NOT_FOUND"


class Conflict(GatewayError):
    """The object exists but is in a state that does not allow the change."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 409
    error_type = "invalid_request_error"
    reason = "CONFLICT"


class Unauthorized(GatewayError):
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401
    error_type = "authentication_error"
    reason = "INVALID_API_KEY"


class ErrorDetails(TypedDict, total=False):
    """GatewayError's keyword arguments, for subclasses that pass them on."""

    reason: str | None
    param: str | None
    metadata: dict[str, str] | None


class ModelNotFound(GatewayError):
    grpc_code = grpc.StatusCode.NOT_FOUND
    http_status = 404
    error_type = "invalid_request_error"
    reason = "MODEL_NOT_FOUND"

    def __init__(self, model: str, message: str | None = None, **kwargs: Unpack[ErrorDetails]) -> None:
        kwargs.setdefault("param", "model")
        kwargs.setdefault("metadata", {"model": model})
        super().__init__(message or f"The model '{model}' does not exist.", **kwargs)


class UpstreamUnavailable(GatewayError):
    grpc_code = grpc.StatusCode.UNAVAILABLE
    http_status = 503
    reason = "UPSTREAM_UNAVAILABLE"
    phrase = "is unavailable"


class RedisUnavailable(UpstreamUnavailable):
    """Redis, which holds API keys, rate limits and stored objects, did not answer; the client
    reconnects by itself once it is back, so the caller should retry shortly."""

    reason = "REDIS_UNAVAILABLE"

    @property
    def headers(self) -> dict[str, str]:
        return {"retry-after": "1"}


class Overloaded(UpstreamUnavailable):
    """The gateway or a service is at capacity and refused the request at once (mesh.shedding)."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429
    error_type = "rate_limit_error"
    reason = OVERLOADED
    phrase = "is at capacity"

    @property
    def headers(self) -> dict[str, str]:
        return {"retry-after": str(RETRY_AFTER_S)}


class UpstreamTimeout(GatewayError):
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504
    reason = "UPSTREAM_TIMEOUT"
    phrase = "did not answer in time"


class StreamStalled(UpstreamTimeout):
    """A stream's upstreams sent no chunk for the gateway's idle timeout, well within the
    stream's deadline: the engine or a service is stuck on it."""

    reason = "STREAM_STALLED"

    def __init__(self, idle_s: float) -> None:
        super().__init__(
            f"No part of the answer came for {idle_s:g} s; the stream was ended.",
            metadata={"idle_timeout_s": f"{idle_s:g}"},
        )


class BudgetExhausted(GatewayError):
    """The router refused: the tenant's spending budget is used up until it resets."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429
    error_type = "insufficient_quota"
    reason = "BUDGET_EXHAUSTED"

    @property
    def headers(self) -> dict[str, str]:
        retry_after = self.metadata.get("retry_after_s")
        return {"retry-after": retry_after} if retry_after else {}


class UpstreamError(GatewayError):
    """An upstream failed in a way the caller cannot fix (INTERNAL, UNKNOWN, ...)."""

    http_status = 502
    reason = "UPSTREAM_ERROR"


_BY_CODE: dict[grpc.StatusCode, type[GatewayError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequest,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidRequest,
    grpc.StatusCode.NOT_FOUND: ModelNotFound,
    grpc.StatusCode.UNAVAILABLE: UpstreamUnavailable,
    # Out of capacity (queue full, breaker open): the caller should come back later.
    grpc.StatusCode.RESOURCE_EXHAUSTED: UpstreamUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: UpstreamTimeout,
}


def injected_error(code: grpc.StatusCode, message: str) -> GatewayError:
    """The error an injected abort with ``code`` stands for (mesh.faults)."""
    cls = _BY_CODE.get(code, UpstreamError)
    if cls is ModelNotFound:
        cls = NotFound
    return cls(message, reason=FAULT_INJECTED)


def from_rpc_error(error: grpc.aio.AioRpcError, service: str) -> GatewayError:
    """The typed error for a failed call to ``service``; keeps the upstream's ErrorInfo reason."""
    cls = _BY_CODE.get(error.code(), UpstreamError)
    info = error_info(error)
    if info and info.reason == BudgetExhausted.reason:
        cls = BudgetExhausted
    elif info and info.reason == Overloaded.reason:
        cls = Overloaded
    metadata = {**(info.metadata if info else {}), "service": service}
    reason = info.reason if info else None
    # Upstream messages about bad requests are written for the caller; those about failures
    # name internal addresses, so they stay in the logs.
    if cls.http_status < 500:
        message = error.details() or "invalid request"
    else:
        message = f"The {service} service {cls.phrase}; please retry."
    failure: GatewayError
    if cls is ModelNotFound:
        failure = ModelNotFound(metadata.get("model", ""), message, reason=reason, metadata=metadata)
    else:
        failure = cls(message, reason=reason, param=metadata.get("param"), metadata=metadata)
    failure.upstream_message = error.details() or ""
    return failure


def log_failure(error: GatewayError, **fields: str) -> None:
    """Server-side failures are the operator's to look at; a caller's mistakes show in the
    access log and metrics by status alone."""
    if error.http_status >= 500:
        log.warning(
            error.message,
            extra={"reason": error.reason, "details": error.metadata, "upstream": error.upstream_message, **fields},
        )
