"""Settings of the router service (env prefix LLMESH_)."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator

from mesh.settings import MeshSettings
from services.router.policies import POLICIES


class RouterSettings(MeshSettings):
    service_name: str = "router"
    # Which entry of services.router.policies.POLICIES decides.
    route_policy: str = "perplexity"
    # perplexity policy: above this perplexity under the small model, use the large model.
    perplexity_threshold: float = Field(default=30.0, gt=0)
    small_model: str = "llmesh-small"
    large_model: str = "llmesh-large"
    # Used when a signal the policy needs cannot be computed (scoring model down or slow).
    degraded_model: str = "llmesh-small"
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

    @field_validator("small_model", "large_model", "degraded_model")
    @classmethod
    def _in_catalog(cls, value: str, info: ValidationInfo) -> str:
        # `models` is validated first (it is declared first); if it failed there is nothing to check.
        names = [model.name for model in info.data.get("models", [])]
        if names and value not in names:
            raise ValueError(f"{value!r} is not in the model catalog ({', '.join(names)})")
        return value
