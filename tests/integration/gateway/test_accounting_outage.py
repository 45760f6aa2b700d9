"""Nothing accepted is lost while Redis is away, with a real redis-server stopped, frozen and
restarted under a gateway whose rate limits fail open: every request answered meanwhile is
charged and audited once Redis is back, exactly once, including what a gateway stopped during
the outage spooled and the next one replayed."""

import asyncio
import json
import signal

import httpx
import pytest
import redis

from gateway import accounting as accounting_module
from gateway.audit import ACCOUNTED, STREAM, Outcome
from gateway.pipeline import Pipeline
from gateway.rest import create_app
from mesh.server import start_service
from mesh.settings import MeshSettings
from support.fake_upstreams import FakeUpstreams, gateway_settings
from support.redis_server import RedisServer

CHAT = "/v1/chat/completions"
BODY = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
CLIENT_TIMEOUT_S = 15.0
# Bounded waits for the background worker to write what it kept: tries 0.1 s apart.
WRITTEN_TRIES = 100


@pytest.fixture(scope="module")
async def upstream():
    running = await start_service(FakeUpstreams(), MeshSettings(), "127.0.0.1:0")
    yield f"127.0.0.1:{running.port}"
    await running.stop(None)


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    if server.process is not None:
        server.process.send_signal(signal.SIGCONT)
    server.stop()


@pytest.fixture
def settings(upstream, own_redis, tmp_path):
    return gateway_settings(
        upstream,
        redis_url=own_redis.url,
        auth_required=True,
        rate_limits_enabled=True,
        rate_limits_fail_open=True,
        audit_enabled=True,
        audit_dir=tmp_path / "audit",
        redis_connect_timeout_s=0.3,
        redis_socket_timeout_s=0.3,
    )


class Gateway:
    """A gateway app in process, with an API key of tenant acme."""

    def __init__(self, settings) -> None:
        self.pipeline = Pipeline(settings)
        self.app = create_app(settings, self.pipeline)
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://gw", timeout=CLIENT_TIMEOUT_S
        )

    @property
    def accounting(self) -> accounting_module.Accounting:
        return self.app.state.guard.accounting

    async def chat(self) -> httpx.Response:
        return await self.http.post(CHAT, json=BODY)

    async def close(self) -> None:
        await self.http.aclose()
        await self.app.state.guard.close()
        await self.app.state.batches.close()
        await self.pipeline.close()


@pytest.fixture
async def gateway(settings):
    running = Gateway(settings)
    key, _ = await running.app.state.guard.tenancy.create_key("acme")
    running.http.headers["authorization"] = f"Bearer {key}"
    yield running
    await running.close()


def audited(own_redis) -> dict[str, list[dict]]:
    """The audit stream's records by request id."""
    client = redis.Redis(port=own_redis.port, decode_responses=True)
    by_request: dict[str, list[dict]] = {}
    for _, fields in client.xrange(STREAM):
        record = json.loads(fields["record"])
        by_request.setdefault(record["request_id"], []).append(record)
    return by_request


def charged(own_redis, record_id: str) -> bool:
    client = redis.Redis(port=own_redis.port, decode_responses=True)
    return client.hget(ACCOUNTED + record_id, "charged") == "1"


async def written(own_redis, request_ids: set[str]) -> dict[str, list[dict]]:
    """The audit records of ``request_ids`` once they are all there (or after the bounded wait)."""
    for _ in range(WRITTEN_TRIES):
        records = audited(own_redis)
        if request_ids <= records.keys():
            return records
        await asyncio.sleep(0.1)
    return audited(own_redis)


def assert_each_once(records: dict[str, list[dict]], own_redis, request_ids: set[str]) -> None:
    assert request_ids <= records.keys(), f"not audited: {request_ids - records.keys()}"
    for request_id in request_ids:
        assert len(records[request_id]) == 1, f"{request_id} audited {len(records[request_id])} times"
        assert charged(own_redis, records[request_id][0]["record_id"]), f"{request_id} not charged"


async def test_requests_answered_while_redis_is_down_are_charged_and_audited_once_it_is_back(gateway, own_redis):
    assert (await gateway.chat()).status_code == 200
    await gateway.accounting.flush()
    own_redis.stop()
    answered = [await gateway.chat() for _ in range(5)]
    assert [response.status_code for response in answered] == [200] * 5
    ids = {response.json()["id"] for response in answered}
    own_redis.start()
    assert_each_once(await written(own_redis, ids), own_redis, ids)


async def test_commands_a_frozen_redis_runs_late_charge_nothing_twice(gateway, own_redis):
    assert (await gateway.chat()).status_code == 200
    # SIGSTOP: the commands sent meanwhile wait in the socket, time out in the gateway, and
    # are run by Redis once it goes on: the gateway's retries must not write them again.
    own_redis.process.send_signal(signal.SIGSTOP)
    try:
        answered = [await gateway.chat() for _ in range(3)]
    finally:
        own_redis.process.send_signal(signal.SIGCONT)
    ids = {response.json()["id"] for response in answered if response.status_code == 200}
    assert len(ids) == 3
    assert_each_once(await written(own_redis, ids), own_redis, ids)


async def test_what_a_gateway_stopped_during_the_outage_kept_the_next_one_writes(settings, gateway, own_redis):
    assert (await gateway.chat()).status_code == 200
    await gateway.accounting.flush()
    own_redis.stop()
    answered = [await gateway.chat() for _ in range(4)]
    ids = {response.json()["id"] for response in answered if response.status_code == 200}
    assert len(ids) == 4
    await gateway.accounting.close(wait_s=0.1)
    spool = settings.audit_dir / accounting_module.SPOOL_NAME
    assert len(spool.read_text().splitlines()) == 4
    own_redis.start()

    after_restart = Gateway(settings)
    try:
        # Its worker starts with the first outcome it is given, and replays the spool first.
        await after_restart.accounting.record(Outcome(request_id="after", tenant="acme", requested_model="auto"))
        records = await written(own_redis, ids | {"after"})
    finally:
        await after_restart.close()
    assert_each_once(records, own_redis, ids)
    assert not spool.exists()


async def test_writing_an_outcome_twice_charges_and_audits_it_once(settings, own_redis):
    settings = settings.model_copy(update={"tenant_tokens_per_minute": 1000})
    running = Gateway(settings)
    try:
        guard = running.app.state.guard
        outcome = Outcome(request_id="twice", tenant="acme", requested_model="auto", prompt_tokens=600)
        for _ in range(2):
            await guard.tenancy.debit(outcome.tenant, outcome.prompt_tokens, outcome.record_id)
            await guard.audit.append(outcome)
    finally:
        await running.close()
    level = redis.Redis(port=own_redis.port, decode_responses=True).hget("llmesh:ratelimit:acme:tokens", "level")
    # Charged once: 1000 - 600 (plus what refilled since); twice would be below zero.
    assert 0 < float(level) < 1000
    assert len(audited(own_redis)["twice"]) == 1
