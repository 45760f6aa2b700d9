"""HTTP surface of A/B tests: request headers in, assignment headers out, ``POST /v1/feedback``,
and the admin API (``/admin/experiments``: CRUD, report, chart)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, Field, field_validator
from redis.exceptions import RedisError
from starlette.datastructures import Headers

from gateway.admin import admin_router
from gateway.errors import GatewayError, InvalidRequest, NotFound
from gateway.experiments import chart
from gateway.experiments.assignment import FORCE_HEADER, parse_forced
from gateway.experiments.definitions import Experiment, conflicts
from gateway.experiments.runtime import Experiments
from gateway.experiments.stats import experiment_report
from gateway.keys_api import api_key
from gateway.records import ChatInput
from gateway.tenancy import ApiKey

SESSION_HEADER = "x-llmesh-session"
EXPERIMENT_HEADER_PREFIX = "x-llmesh-experiment-"


class StoreUnavailable(GatewayError):
    http_status = 503
    reason = "EXPERIMENT_STORE_UNAVAILABLE"


def with_request_headers(request: ChatInput, headers: Headers) -> ChatInput:
    """The session id and forced variants a caller sent as headers."""
    try:
        forced = parse_forced(headers.get(FORCE_HEADER, ""))
    except ValueError as error:
        raise InvalidRequest(f"{FORCE_HEADER}: {error}", param=FORCE_HEADER) from None
    return replace(request, session_id=headers.get(SESSION_HEADER, ""), forced_variants=forced)


def assignment_headers(experiments: Mapping[str, str]) -> dict[str, str]:
    """One response header per assignment: a client (or a test) sees which variant served it."""
    return {EXPERIMENT_HEADER_PREFIX + name: variant for name, variant in experiments.items()}


class Feedback(BaseModel):
    request_id: str = Field(min_length=1, max_length=200)
    score: float

    @field_validator("score")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("score must be a finite number")
        return value


def router(experiments: Experiments) -> APIRouter:
    api = APIRouter()
    store = experiments.store

    # Same API keys as the completions the feedback is about.
    @api.post("/v1/feedback")
    async def feedback(body: Feedback, caller: ApiKey = Depends(api_key)) -> dict:
        """A user's score of an answer, added to the variants that served it."""
        with _store_errors():
            assignments = await store.feedback(body.request_id, body.score, caller.tenant)
        if assignments is None:
            raise NotFound(
                f"No request {body.request_id!r} in an experiment (feedback is kept for requests in one, for a week).",
                param="request_id",
            )
        return {"object": "feedback", "request_id": body.request_id, "experiments": assignments}

    admin = admin_router()

    @admin.get("/experiments")
    async def list_experiments() -> dict:
        with _store_errors():
            stored = await store.load()
        return {
            "object": "list",
            "data": [
                {
                    **experiment.model_dump(),
                    "serving": experiment.name in experiments.active,
                    "problem": experiments.unservable(experiment),
                }
                for experiment in stored
            ],
        }

    @admin.get("/experiments/{name}")
    async def get_experiment(name: str) -> dict:
        return (await _existing(name)).model_dump()

    @admin.put("/experiments/{name}")
    async def put_experiment(name: str, experiment: Experiment) -> dict:
        if experiment.name != name:
            raise InvalidRequest(f"The body names {experiment.name!r}, the path {name!r}.", param="name")
        problem = experiments.unservable(experiment)
        with _store_errors():
            others = [e for e in await store.load() if e.name != name]
        problem = problem or next(iter(conflicts([*others, experiment])), None)
        if problem:
            raise InvalidRequest(f"This gateway cannot serve {name!r}: {problem}.")
        with _store_errors():
            await experiments.apply([experiment])
        return experiment.model_dump()

    @admin.delete("/experiments/{name}")
    async def delete_experiment(name: str, keep_results: bool = False) -> dict:
        with _store_errors():
            deleted = await store.delete(name, keep_results=keep_results)
            await experiments.reload()
        if not deleted:
            raise NotFound(f"No experiment {name!r}.")
        return {"object": "experiment.deleted", "name": name, "deleted": True}

    @admin.post("/experiments/{name}/reset")
    async def reset_experiment(name: str) -> dict:
        await _existing(name)
        with _store_errors():
            await store.reset(name)
        return {"object": "experiment.reset", "name": name}

    @admin.get("/experiments/{name}/report")
    async def report(name: str) -> dict:
        return await _report(name)

    @admin.get("/experiments/{name}/chart.png")
    async def chart_png(name: str) -> Response:
        return Response(chart.render(await _report(name)), media_type="image/png")

    async def _existing(name: str) -> Experiment:
        with _store_errors():
            experiment = await store.get(name)
        if experiment is None:
            raise NotFound(f"No experiment {name!r}.")
        return experiment

    async def _report(name: str) -> dict:
        with _store_errors():
            result = await experiment_report(store, name)
        if result is None:
            raise NotFound(f"No experiment {name!r}.")
        return result

    api.include_router(admin)
    return api


@contextmanager
def _store_errors() -> Iterator[None]:
    """Redis trouble is a 503 the caller can retry, not a 500."""
    try:
        yield
    except (RedisError, OSError) as error:
        raise StoreUnavailable("The experiment store (Redis) is unavailable; please retry.") from error
