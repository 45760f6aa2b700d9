"""RouterService: picks the model for a request with the configured policy."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc
import redis
from opentelemetry import trace
from prometheus_client import Counter

from llmesh.router.v1 import router_pb2, router_pb2_grpc
from mesh import semconv
from mesh.catalog import AUTO_MODEL, find_model
from mesh.channel import build_channel
from mesh.errors import abort
from services.router.budget import Budgets
from services.router.policies import Decision, Policy, build_policy, cost
from services.router.scoring import InferenceScorer
from services.router.settings import RouterSettings
from services.router.signals import Scorer, Signals, SignalUnavailable

log = logging.getLogger(__name__)

# outcome: "policy" (the policy chose), "requested", "degraded" (a signal was missing),
# "budget-degraded" (the tenant's budget is spent); the reason itself is on the trace.
ROUTE_DECISIONS = Counter(semconv.METRIC_ROUTE_DECISIONS, "Routing decisions", ["policy", "model", "outcome"])
BUDGET_REFUSALS = Counter(semconv.METRIC_ROUTE_BUDGET_REFUSALS, "Requests refused on a spent budget", ["policy"])

# The policy name reported when the client named a model and no policy ran.
REQUESTED = "requested"


class RouterService(router_pb2_grpc.RouterServiceServicer):
    service_names: Sequence[str] = (router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name,)

    def __init__(self, settings: RouterSettings, scorer: Scorer | None = None) -> None:
        self.settings = settings
        self._inference = None if scorer is not None else build_channel(settings.inference_addr, settings)
        self.scorer = scorer or InferenceScorer(self._inference, settings.scoring_model)
        self.policy = build_policy(settings)
        self._policies: dict[str, Policy] = {self.policy.name: self.policy}
        for name in {*settings.tenant_policies.values(), *settings.experiment_policies.values()}:
            self._policies.setdefault(name, build_policy(settings, name))
        self.budgets = Budgets.from_settings(settings) if settings.tenant_budgets else None
        self._prices = {m.name: (m.price_input_per_1k, m.price_output_per_1k) for m in settings.models}

    def register(self, server: grpc.aio.Server) -> None:
        router_pb2_grpc.add_RouterServiceServicer_to_server(self, server)

    async def ready(self) -> bool:
        # Routing works without scores (it degrades), but a router that cannot score would route
        # every request by its fallback: not ready until the inference service is.
        ready = getattr(self.scorer, "ready", None)
        return await ready() if ready is not None else True

    async def close(self) -> None:
        if self._inference is not None:
            await self._inference.close()
        if self.budgets is not None:
            await self.budgets.close()
        for policy in self._policies.values():
            load = getattr(policy, "load", None)
            if load is not None:
                await load.close()

    def policy_for(self, context) -> Policy:
        """The A/B variant's policy, else the tenant's, else the default."""
        for experiment, variant in sorted(context.experiments.items()):
            name = self.settings.experiment_policies.get(f"{experiment}:{variant}")
            if name:
                return self._policies[name]
        name = self.settings.tenant_policies.get(context.tenant_id)
        return self._policies[name] if name else self.policy

    async def Route(self, request: router_pb2.RouteRequest, context) -> router_pb2.RouteResponse:
        requested = request.requested_model
        prompt = next((p for p in request.prompts if p.model == self.settings.scoring_model), None)
        if prompt is None:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"no prompt for the scoring model {self.settings.scoring_model}",
                "EMPTY_PROMPT",
            )
        signals = Signals(self.scorer, prompt.token_ids, self.settings, prompt.text)
        if requested not in ("", AUTO_MODEL):
            if find_model(self.settings.models, requested) is None:
                message = f"unknown model {requested!r}"
                await abort(context, grpc.StatusCode.NOT_FOUND, message, "MODEL_NOT_FOUND", model=requested)
            policy, decision, outcome = REQUESTED, Decision(requested, "requested"), REQUESTED
        else:
            chosen = self.policy_for(request.context)
            policy = chosen.name
            decision, outcome = await self._decide(chosen, request, signals)
        decision, outcome = await self._apply_budget(request, context, policy, decision, outcome)

        response = router_pb2.RouteResponse(
            model=decision.model,
            fallback_models=[model.name for model in self.settings.models if model.name != decision.model],
            reason=decision.reason,
            policy=policy,
            signals=signals.values,
        )
        if decision.escalate_to:
            response.cascade.escalate_model = decision.escalate_to
            response.cascade.min_mean_logprob = decision.escalate_below
        trace.get_current_span().set_attributes(
            {
                semconv.GEN_AI_REQUEST_MODEL: response.model,
                semconv.LLMESH_ROUTE_POLICY: response.policy,
                semconv.LLMESH_ROUTE_REASON: response.reason,
                semconv.LLMESH_ROUTE_FALLBACKS: list(response.fallback_models),
                semconv.LLMESH_ROUTE_OUTCOME: outcome,
                **{semconv.LLMESH_ROUTE_SIGNAL_PREFIX + name: value for name, value in signals.values.items()},
            }
        )
        if decision.escalate_to:
            trace.get_current_span().set_attribute(semconv.LLMESH_ROUTE_ESCALATE_TO, decision.escalate_to)
        ROUTE_DECISIONS.labels(response.policy, response.model, outcome).inc()
        return response

    async def _decide(self, policy: Policy, request: router_pb2.RouteRequest, signals: Signals) -> tuple[Decision, str]:
        try:
            return await policy.decide(request, signals), "policy"
        except SignalUnavailable as error:
            # Routing must not fail a request that a model could still answer.
            log.warning(
                "routing degraded",
                extra={"policy": policy.name, "error": str(error), "cause": str(error.__cause__ or "")},
            )
            return Decision(self.settings.degraded_model, f"{error}; default model"), "degraded"

    async def _apply_budget(
        self, request, context, policy: str, decision: Decision, outcome: str
    ) -> tuple[Decision, str]:
        """Charges the tenant's budget; once it is spent, degrades to the small model or refuses."""
        tenant = request.context.tenant_id
        if self.budgets is None or tenant not in self.budgets.limits:
            return decision, outcome
        try:
            state = await self.budgets.state(tenant)
            if state is not None and state.exhausted:
                if self.settings.budget_exhausted_action == "refuse":
                    BUDGET_REFUSALS.labels(policy).inc()
                    message = f"tenant {tenant!r} has spent its budget of {state.limit:g}"
                    await abort(
                        context,
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        message,
                        "BUDGET_EXHAUSTED",
                        tenant=tenant,
                        retry_after_s=str(state.retry_after_s),
                    )
                small = self.settings.small_model
                decision = Decision(
                    small, f"budget {state.spent:.4g}/{state.limit:g} spent; {small} instead of {decision.model}"
                )
                outcome = "budget-degraded"
            tokens = next((len(p.token_ids) for p in request.prompts if p.model == decision.model), 0)
            await self.budgets.charge(
                tenant, cost(self._prices[decision.model], tokens, self.settings.expected_output_tokens)
            )
        except redis.RedisError as error:
            # Budgets are bookkeeping: Redis being down must not stop requests.
            log.warning("budget unavailable", extra={"tenant": tenant, "error": str(error)})
        return decision, outcome
