"""Settings of the router service (env prefix LLMESH_)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from mesh.settings import MeshSettings
from services.router.policies import POLICIES


class RouterSettings(MeshSettings):
    service_name: str = "router"
    # The catalog model whose perplexity of a prompt is the router's signal (InferenceService.Score):
    # the cheap tier, so scoring costs little and the signal is how familiar the prompt is to it.
    scoring_model: str = "smollm2-student"
    # Which entry of services.router.policies.POLICIES decides.
    route_policy: str = "perplexity"
    # Overrides of route_policy: per tenant (tenant id -> policy), and per A/B variant
    # ("experiment:variant" from RequestContext.experiments -> policy), which wins over the tenant's.
    tenant_policies: dict[str, str] = Field(default_factory=dict)
    experiment_policies: dict[str, str] = Field(default_factory=dict)
    # perplexity policy: above this perplexity under the small model, use the large model.
    # Threshold defaults send 30% of the eval's fit split to the large model; recompute them
    # with `llmesh router calibrate --share S --policy P` (docs/ROUTER.md).
    perplexity_threshold: float = Field(default=6725.96, gt=0)
    # random policy: the share of requests sent to the large model.
    random_large_share: float = Field(default=0.5, ge=0, le=1)
    # fixed policy: the one model.
    fixed_model: str = "smollm2-student"
    # cascade policy: escalate when the small answer's mean token log-prob is below this.
    cascade_min_logprob: float = -1.4872
    # learned policy: the artifact (file, or directory = newest version) and p(large better) cut.
    learned_router_path: str = "models/artifacts/router/learned"
    learned_threshold: float = Field(default=0.991917, ge=0, le=1)
    # ppo policy: the artifact (file, or directory = newest version) and the price of quality λ
    # (reward = quality - λ · cost, cost in units of the large model's mean request cost).
    ppo_router_path: str = "models/artifacts/router/ppo"
    ppo_lambda: float = Field(default=1.37401, gt=0)
    # cost-aware policy: the large model is chosen when the quality it is predicted to add (mean
    # log-prob per token) per extra currency unit of effective cost exceeds this.
    cost_min_gain_per_currency: float = Field(default=4463.58, gt=0)
    # Output tokens assumed when pricing a request before it is answered.
    expected_output_tokens: int = Field(default=64, ge=0)
    # Engine load (Triton's metrics endpoint): re-read at most this often; a model's price doubles
    # at either limit (requests the engine is generating for, requests queued in it).
    load_refresh_s: float = Field(default=1.0, gt=0)
    load_running: float = Field(default=32.0, gt=0)
    load_waiting: float = Field(default=4.0, gt=0)
    # Per-tenant budgets in currency per UTC day (Redis); what happens when one is spent.
    tenant_budgets: dict[str, float] = Field(default_factory=dict)
    budget_exhausted_action: Literal["degrade", "refuse"] = "degrade"
    small_model: str = "smollm2-student"
    large_model: str = "smollm2-135m-instruct"
    # Used when a signal the policy needs cannot be computed (scoring model down or slow).
    degraded_model: str = "smollm2-student"
    # Only the last tokens of a prompt are scored.
    max_score_tokens: int = Field(default=128, ge=2)
    # Scoring gives up after this long (and the router degrades) rather than eat the request's deadline.
    score_timeout_s: float = Field(default=2.0, gt=0)

    @field_validator("route_policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        if value not in POLICIES:
            raise ValueError(f"unknown policy {value!r}; known: {', '.join(sorted(POLICIES))}")
        return value

    @field_validator("tenant_policies", "experiment_policies")
    @classmethod
    def _known_policies(cls, value: dict[str, str]) -> dict[str, str]:
        for policy in value.values():
            cls._known_policy(policy)
        return value

    @field_validator("small_model", "large_model", "degraded_model", "fixed_model", "scoring_model")
    @classmethod
    def _in_catalog(cls, value: str, info: ValidationInfo) -> str:
        # `models` is validated first (it is declared first); if it failed there is nothing to check.
        names = [model.name for model in info.data.get("models", [])]
        if names and value not in names:
            raise ValueError(f"{value!r} is not in the model catalog ({', '.join(names)})")
        return value
