"""Perplexity of a prompt, from the inference service's Score RPC (the router never calls Triton)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from services.router.signals import ScoringFailed

INFERENCE_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name


class InferenceScorer:
    """Scores prompts with one model through ``InferenceService.Score``: behind that model's
    circuit breaker, like any other call to it."""

    def __init__(self, channel: grpc.aio.Channel, model: str) -> None:
        self.model = model
        self._stub = inference_pb2_grpc.InferenceServiceStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)

    async def score(self, prompt_ids: Sequence[int]) -> np.ndarray:
        request = inference_pb2.ScoreRequest(model=self.model, prompt_token_ids=list(prompt_ids))
        try:
            response = await self._stub.Score(request)
        except grpc.aio.AioRpcError as error:
            raise ScoringFailed(f"{error.code().name}: {error.details()}") from error
        return np.asarray(response.token_logprobs, dtype=np.float64)

    async def ready(self) -> bool:
        """Whether the inference service reports itself SERVING (its models are loaded)."""
        try:
            response = await self._health.Check(health_pb2.HealthCheckRequest(service=INFERENCE_SERVICE), timeout=2.0)
        except grpc.aio.AioRpcError:
            return False
        return response.status == health_pb2.HealthCheckResponse.SERVING
