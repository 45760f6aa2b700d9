"""The cascade policy's second half, run by the gateway on unary answers.

The router (policy "cascade") answers with the small model first and names the model to
escalate to. When the first answer's mean token log-prob under its own model is below the
router's cut, the request is answered again by the larger model; the first call's tokens were
paid for and are counted as wasted. Streaming answers are never escalated (the router routes
them up front), because text already sent cannot be taken back.
"""

from __future__ import annotations

import logging
from statistics import fmean

import grpc
from opentelemetry.trace import Span
from prometheus_client import Counter

from llmesh.inference.v1 import inference_pb2
from llmesh.router.v1 import router_pb2
from mesh import semconv

log = logging.getLogger(__name__)

ESCALATIONS = Counter(
    semconv.METRIC_ROUTE_ESCALATIONS,
    "Cascade decisions after the first answer",
    ["from_model", "to_model", "escalated"],
)


def should_escalate(route: router_pb2.RouteResponse, answer: inference_pb2.GenerateResponse) -> tuple[bool, str]:
    """Whether to answer again, and the reason to report."""
    cascade = route.cascade
    logprobs = answer.choices[0].token_logprobs if answer.choices else []
    if not logprobs:
        return False, f"{route.reason}; kept (empty answer)"
    mean = fmean(logprobs)
    if mean < cascade.min_mean_logprob:
        return (
            True,
            f"cascade: {answer.model or route.model} answer logprob {mean:.2f} < {cascade.min_mean_logprob:.2f}, escalated to {cascade.escalate_model}",
        )
    return (
        False,
        f"cascade: {answer.model or route.model} answer logprob {mean:.2f} >= {cascade.min_mean_logprob:.2f}, kept",
    )


def escalation_request(
    request: inference_pb2.GenerateRequest, route: router_pb2.RouteResponse
) -> inference_pb2.GenerateRequest:
    escalated = inference_pb2.GenerateRequest()
    escalated.CopyFrom(request)
    escalated.model = route.cascade.escalate_model
    del escalated.fallback_models[:]
    escalated.fallback_models.extend(m for m in route.fallback_models if m != escalated.model)
    return escalated


def record(
    span: Span, route: router_pb2.RouteResponse, first: inference_pb2.GenerateResponse, escalated: bool, reason: str
) -> None:
    ESCALATIONS.labels(first.model or route.model, route.cascade.escalate_model, str(escalated).lower()).inc()
    span.set_attributes({semconv.LLMESH_ROUTE_ESCALATED: escalated, semconv.LLMESH_ROUTE_REASON: reason})
    if escalated:
        # The first answer's tokens were generated and paid for, then thrown away.
        span.set_attribute(semconv.LLMESH_ROUTE_WASTED_TOKENS, first.usage.total_tokens)


async def escalate(
    route: router_pb2.RouteResponse,
    first: inference_pb2.GenerateResponse,
    request: inference_pb2.GenerateRequest,
    inference,
    span: Span,
) -> tuple[inference_pb2.GenerateResponse, str]:
    """The answer to return and the route reason; the first answer stands if escalation fails."""
    weak, reason = should_escalate(route, first)
    record(span, route, first, weak, reason)
    if not weak:
        return first, reason
    try:
        return await inference.Generate(escalation_request(request, route)), reason
    except grpc.aio.AioRpcError as error:
        log.warning(
            "cascade escalation failed", extra={"model": route.cascade.escalate_model, "error": error.details()}
        )
        return first, f"{reason}; escalation failed, kept {first.model or route.model}"
