"""Model lifecycle and circuit breakers under /admin (admin key required): the versions of each
model on Triton and their traffic split, load a version, shift traffic, roll back, unload
(docs/RESILIENCE.md, "Model versions"). The inference service does the work; these routes
only translate, so every gateway and the CLI (`llmesh models`) act the same."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import grpc
from fastapi import APIRouter, Request
from google.protobuf.message import Message
from pydantic import BaseModel, Field

from gateway.admin import admin_router
from gateway.errors import from_rpc_error
from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc

# A load starts an engine (tens of seconds on CPU, minutes for large weights on a GPU); an
# unload waits for requests in flight on the version.
LOAD_TIMEOUT_S = 330.0
CHANGE_TIMEOUT_S = 90.0
LIST_TIMEOUT_S = 10.0

ReplyT = TypeVar("ReplyT", bound=Message)


class NewVersion(BaseModel):
    version: int = Field(ge=1)
    # The version's weights (a Hugging Face directory Triton can read); default: the model's own.
    model_dir: str = ""


class TrafficSplit(BaseModel):
    # Percent of the model's requests per version, e.g. {"1": 90, "2": 10}; they add up to 100.
    percent: dict[int, int] = Field(min_length=1)


def _versions(entry: inference_pb2.ModelVersions) -> dict:
    """A model's versions as JSON (numbers as numbers: protobuf's JSON writes int64 as text)."""
    return {
        "model": entry.model,
        "split_set": entry.split_set,
        "versions": [
            {"version": v.version, "state": v.state, "reason": v.reason, "percent": v.percent, "stable": v.stable}
            for v in entry.versions
        ],
    }


def _stub(request: Request) -> inference_pb2_grpc.InferenceServiceStub:
    return inference_pb2_grpc.InferenceServiceStub(request.app.state.inference_channel)


async def _call(reply: Awaitable[ReplyT]) -> ReplyT:
    try:
        return await reply
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error, "inference") from error


def models_admin_router() -> APIRouter:
    router = admin_router()

    @router.get("/models")
    async def list_versions(request: Request, model: str = "") -> dict:
        reply = await _call(
            _stub(request).ListModelVersions(
                inference_pb2.ListModelVersionsRequest(model=model), timeout=LIST_TIMEOUT_S
            )
        )
        return {"object": "list", "data": [_versions(entry) for entry in reply.models]}

    @router.post("/models/{model}/versions")
    async def load(model: str, body: NewVersion, request: Request) -> dict:
        message = inference_pb2.LoadModelVersionRequest(model=model, version=body.version, model_dir=body.model_dir)
        reply = await _call(_stub(request).LoadModelVersion(message, timeout=LOAD_TIMEOUT_S))
        return {"model": _versions(reply.model), "seconds": reply.seconds}

    @router.put("/models/{model}/traffic")
    async def shift(model: str, body: TrafficSplit, request: Request) -> dict:
        message = inference_pb2.SetTrafficSplitRequest(model=model, percent=body.percent)
        reply = await _call(_stub(request).SetTrafficSplit(message, timeout=CHANGE_TIMEOUT_S))
        return {"model": _versions(reply.model)}

    @router.post("/models/{model}/rollback")
    async def roll_back(model: str, request: Request) -> dict:
        message = inference_pb2.RollBackRequest(model=model)
        reply = await _call(_stub(request).RollBack(message, timeout=CHANGE_TIMEOUT_S))
        return {
            "model": _versions(reply.model),
            "traffic_seconds": reply.traffic_seconds,
            "seconds": reply.seconds,
            "unloaded": list(reply.unloaded),
        }

    @router.delete("/models/{model}/versions/{version}")
    async def unload(model: str, version: int, request: Request) -> dict:
        message = inference_pb2.UnloadModelVersionRequest(model=model, version=version)
        reply = await _call(_stub(request).UnloadModelVersion(message, timeout=CHANGE_TIMEOUT_S))
        return {"model": _versions(reply.model), "seconds": reply.seconds}

    @router.get("/breakers")
    async def breakers(request: Request) -> dict:
        """The circuit breakers of the inference replica that answers (each replica has its own;
        `llmesh_inference_breaker_state` on each replica's /metrics shows them all)."""
        reply = await _call(_stub(request).ListBreakers(inference_pb2.ListBreakersRequest(), timeout=LIST_TIMEOUT_S))
        data = [{"model": breaker.model, "state": breaker.state} for breaker in reply.breakers]
        return {"object": "list", "replica": reply.replica, "data": data}

    return router
