"""Settings of the inference service (env prefix LLMESH_)."""

from __future__ import annotations

from pydantic import Field

from mesh.settings import MeshSettings
from services.inference.circuit import BreakerConfig


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

    def breaker_config(self) -> BreakerConfig:
        return BreakerConfig(
            failure_threshold=self.breaker_failure_threshold,
            slow_ttft_s=self.breaker_slow_ttft_s,
            slow_threshold=self.breaker_slow_threshold,
            slow_window_s=self.breaker_slow_window_s,
            cooldown_s=self.breaker_cooldown_s,
        )
