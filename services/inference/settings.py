"""Settings of the inference service (env prefix LLMESH_)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mesh.settings import ENV_PREFIX, MeshSettings
from services.inference.circuit import BreakerConfig


class ModelLimit(BaseModel):
    """One model's admission limits (LLMESH_MODEL_LIMITS); what is left out keeps the default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_concurrent: int | None = Field(default=None, ge=0)
    max_queued: int | None = Field(default=None, ge=0)


class InferenceSettings(MeshSettings):
    service_name: str = "inference"
    # Used when a request's SamplingParams.max_tokens is 0.
    default_max_tokens: int = Field(default=128, gt=0)

    # Per-model circuit breaker (services/inference/circuit.py). The TTFT threshold is far above
    # what a healthy model takes, so only an overloaded or stuck model trips it.
    breaker_failure_threshold: int = Field(default=5, ge=1)
    breaker_slow_ttft_s: float = Field(default=5.0, gt=0)
    breaker_slow_threshold: int = Field(default=3, ge=1)
    breaker_slow_window_s: float = Field(default=60.0, gt=0)
    breaker_cooldown_s: float = Field(default=15.0, gt=0)

    # Model lifecycle (services/inference/lifecycle.py): how often each replica reads the traffic
    # splits from Redis, how long a version may take to load, and how long an unload waits for
    # requests in flight on it.
    model_split_refresh_s: float = Field(default=0.5, gt=0)
    model_load_timeout_s: float = Field(default=300.0, gt=0)
    model_drain_timeout_s: float = Field(default=30.0, gt=0)

    # Per-model admission (services/inference/admission.py): engine calls of one model running
    # at once (0: no limit) and waiting for one of those slots; more go to the next model of the
    # request's chain, or are refused RESOURCE_EXHAUSTED (OVERLOADED). LLMESH_MODEL_LIMITS
    # (JSON: {"smollm2-135m-instruct": {"max_concurrent": 8, "max_queued": 4}}) overrides them
    # per model.
    model_max_concurrent_requests: int = Field(default=64, ge=0)
    model_max_queued_requests: int = Field(default=64, ge=0)
    model_limits: dict[str, ModelLimit] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _limits_name_served_models(self) -> InferenceSettings:
        served = {model.name for model in self.models} | {model.name for model in self.embedding_models}
        unknown = sorted(set(self.model_limits) - served)
        if unknown:
            raise ValueError(
                f"{ENV_PREFIX}MODEL_LIMITS names models that are not served: {', '.join(unknown)} "
                f"(served: {', '.join(sorted(served))})"
            )
        return self

    def model_limit(self, model: str) -> tuple[int, int]:
        """(max concurrent, max queued) engine calls of ``model``."""
        limit = self.model_limits.get(model, ModelLimit())
        return (
            self.model_max_concurrent_requests if limit.max_concurrent is None else limit.max_concurrent,
            self.model_max_queued_requests if limit.max_queued is None else limit.max_queued,
        )

    def breaker_config(self) -> BreakerConfig:
        return BreakerConfig(
            failure_threshold=self.breaker_failure_threshold,
            slow_ttft_s=self.breaker_slow_ttft_s,
            slow_threshold=self.breaker_slow_threshold,
            slow_window_s=self.breaker_slow_window_s,
            cooldown_s=self.breaker_cooldown_s,
        )
