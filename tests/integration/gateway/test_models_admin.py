"""/admin/models and /admin/breakers: the gateway's REST edge, a real inference service over gRPC
and a real redis-server; only Triton is scripted (tests/integration/services/inference/
test_model_versions.py runs the same steps on the real one)."""

import httpx
import pytest

from gateway.pipeline import Pipeline
from gateway.rest import create_app
from mesh.redis_client import sync_redis
from mesh.server import start_service
from services.inference.service import InferenceService
from services.inference.settings import InferenceSettings
from services.inference.versions import split_key
from support.fake_triton import FakeTriton, answer
from support.fake_upstreams import gateway_settings

SMALL = "llmesh-small"
ADMIN_KEY = "admin-secret"


class VersionedTriton(FakeTriton):
    """A Triton whose llmesh-small has versions that load and unload at once."""

    def __init__(self):
        super().__init__({SMALL: answer(1), "smollm2-135m-instruct": answer(2), "smollm2-student": answer(3)})
        self.states = {1: ("READY", "")}

    async def model_versions(self, name):
        return dict(self.states) if name == SMALL else {1: ("READY", "")}

    async def model_config(self, name):
        return {"name": name}

    async def load_model(self, name, config, timeout_s):
        versions = config["version_policy"]["specific"]["versions"]
        self.states = {v: ("READY", "") for v in versions} | {
            v: ("UNAVAILABLE", "unloaded") for v in self.states if v not in versions
        }


@pytest.fixture
async def admin(upstreams, redis_url):
    settings = InferenceSettings(redis_url=redis_url, embedding_models=[], model_split_refresh_s=0.05)
    service = InferenceService(settings, VersionedTriton())
    inference = await start_service(service, settings, "127.0.0.1:0")
    gateway = gateway_settings(
        upstreams[1], inference_addr=f"127.0.0.1:{inference.port}", admin_key=ADMIN_KEY, default_deadline_s=30
    )
    pipeline = Pipeline(gateway)
    transport = httpx.ASGITransport(app=create_app(gateway, pipeline))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://gateway", headers={"authorization": f"Bearer {ADMIN_KEY}"}
    ) as client:
        yield client
    await pipeline.close()
    await inference.stop(None)
    await service.close()
    # The session's Redis is shared: leave no split behind for the tests after this one.
    sync_redis(settings).delete(split_key(SMALL))


async def test_the_admin_key_is_required(admin):
    response = await admin.get("/admin/models", headers={"authorization": "Bearer wrong"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


async def test_load_shift_and_roll_back_through_the_admin_api(admin):
    listed = (await admin.get("/admin/models", params={"model": SMALL})).json()["data"][0]
    assert listed == {
        "model": SMALL,
        "split_set": False,
        "versions": [{"version": 1, "state": "READY", "reason": "", "percent": 0, "stable": False}],
    }

    loaded = await admin.post(f"/admin/models/{SMALL}/versions", json={"version": 2})
    assert loaded.status_code == 200, loaded.text
    assert [(v["version"], v["percent"], v["stable"]) for v in loaded.json()["model"]["versions"]] == [
        (1, 100, True),
        (2, 0, False),
    ]

    shifted = await admin.put(f"/admin/models/{SMALL}/traffic", json={"percent": {"1": 50, "2": 50}})
    assert [v["percent"] for v in shifted.json()["model"]["versions"]] == [50, 50]

    rolled = (await admin.post(f"/admin/models/{SMALL}/rollback")).json()
    assert rolled["unloaded"] == [2]
    assert [(v["version"], v["state"], v["percent"]) for v in rolled["model"]["versions"]] == [
        (1, "READY", 100),
        (2, "UNAVAILABLE", 0),
    ]


async def test_a_bad_split_and_an_unknown_model_are_clear_errors(admin):
    bad = await admin.put(f"/admin/models/{SMALL}/traffic", json={"percent": {"1": 70}})
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_split"
    assert "add up to 100" in bad.json()["error"]["message"]

    unknown = await admin.post("/admin/models/gpt-9/rollback")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"


async def test_breakers_are_listed_by_the_replica_that_answers(admin):
    breakers = (await admin.get("/admin/breakers")).json()
    assert breakers["replica"] == "inference"
    assert {b["model"]: b["state"] for b in breakers["data"]} == {
        "smollm2-student": "closed",
        "smollm2-135m-instruct": "closed",
        "llmesh-small": "closed",
    }
