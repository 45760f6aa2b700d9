"""RouterService: picks the model for a request with the configured policy."""

from __future__ import annotations

import logging

import grpc
from opentelemetry import trace
from prometheus_client import Counter

from llmesh.router.v1 import router_pb2, router_pb2_grpc
from mesh import semconv
from mesh.catalog import AUTO_MODEL, find_model
from mesh.errors import abort
from services.inference.triton_client import TritonClient
from services.router.policies import Decision, Signals, SignalUnavailable, build_policy
from services.router.settings import RouterSettings

log = logging.getLogger(__name__)

ROUTE_DECISIONS = Counter(semconv.METRIC_ROUTE_DECISIONS, "Routing decisions", ["policy", "model"])

# The policy name reported when the client named a model and no policy ran.
REQUESTED = "requested"


class RouterService(router_pb2_grpc.RouterServiceServicer):
    service_names = [router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name]

    def __init__(self, settings: RouterSettings, triton: TritonClient | None = None) -> None:
        self.settings = settings
        self.triton = triton or TritonClient(settings)
        self.policy = build_policy(settings)

    def register(self, server: grpc.aio.Server) -> None:
        router_pb2_grpc.add_RouterServiceServicer_to_server(self, server)

    async def ready(self) -> bool:
        return await self.triton.model_ready(self.settings.scoring_model)

    async def close(self) -> None:
        await self.triton.close()

    async def Route(self, request: router_pb2.RouteRequest, context) -> router_pb2.RouteResponse:
        requested = request.requested_model
        signals = Signals(self.triton, request.prompt_token_ids, self.settings)
        if requested not in ("", AUTO_MODEL):
            if find_model(self.settings.models, requested) is None:
                message = f"unknown model {requested!r}"
                await abort(context, grpc.StatusCode.NOT_FOUND, message, "MODEL_NOT_FOUND", model=requested)
            policy, decision = REQUESTED, Decision(requested, "requested")
        else:
            policy, decision = self.policy.name, await self._decide(request, signals)

        response = router_pb2.RouteResponse(
            model=decision.model,
            fallback_models=[model.name for model in self.settings.models if model.name != decision.model],
            reason=decision.reason,
            policy=policy,
            signals=signals.values,
        )
        trace.get_current_span().set_attributes(
            {
                semconv.GEN_AI_REQUEST_MODEL: response.model,
                semconv.LLMESH_ROUTE_POLICY: response.policy,
                semconv.LLMESH_ROUTE_REASON: response.reason,
                semconv.LLMESH_ROUTE_FALLBACKS: list(response.fallback_models),
                **{semconv.LLMESH_ROUTE_SIGNAL_PREFIX + name: value for name, value in signals.values.items()},
            }
        )
        ROUTE_DECISIONS.labels(response.policy, response.model).inc()
        return response

    async def _decide(self, request: router_pb2.RouteRequest, signals: Signals) -> Decision:
        try:
            return await self.policy.decide(request, signals)
        except SignalUnavailable as error:
            # Routing must not fail a request that a model could still answer.
            log.warning(
                "routing degraded",
                extra={"policy": self.policy.name, "error": str(error), "cause": str(error.__cause__ or "")},
            )
            return Decision(self.settings.degraded_model, f"{error}; default model")
