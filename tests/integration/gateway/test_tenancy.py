"""API keys, rate limits, interactive load and the audit chain against a real Redis, with several "replicas"
(independent clients) sharing it."""

import asyncio

import pytest
import redis
import redis.asyncio as aioredis

from gateway import audit
from gateway.errors import Unauthorized
from gateway.load import InteractiveLoad, interactive_in_flight
from gateway.settings import GatewaySettings
from gateway.tenancy import KeyNotFound, RateLimited, Tenancy


@pytest.fixture
def settings(redis_url, tmp_path):
    # A database of its own, emptied: the session's Redis is shared with other tests.
    url = redis_url.rsplit("/", 1)[0] + "/7"
    redis.Redis.from_url(url).flushdb()
    return GatewaySettings(redis_url=url, audit_dir=tmp_path / "audit", tenant_requests_per_minute=3)


async def test_keys_are_stored_hashed_and_revocable(settings):
    tenancy = Tenancy(settings)
    key, record = await tenancy.create_key("acme", "ci")
    assert (await tenancy.authenticate(f"Bearer {key}")).tenant == "acme"
    raw = redis.Redis.from_url(settings.redis_url)
    assert not any(
        key.encode() in k or key.encode() in (raw.get(k) or b"") for k in raw.keys("*") if raw.type(k) == b"string"
    )
    with pytest.raises(Unauthorized):
        await tenancy.authenticate(None)
    with pytest.raises(Unauthorized):
        await tenancy.authenticate(f"Bearer {key}x")
    await tenancy.create_key("other")
    with pytest.raises(KeyNotFound):
        await tenancy.revoke(record.key_id, tenant="other")
    await tenancy.revoke(record.key_id, tenant="acme")
    with pytest.raises(Unauthorized):
        await tenancy.authenticate(f"Bearer {key}")
    assert [k.tenant for k in await tenancy.list_keys()] == ["other"]
    await tenancy.close()


async def test_a_key_revoked_by_another_replica_stops_working_within_its_cache_ttl(settings):
    settings = settings.model_copy(update={"api_key_cache_ttl_s": 0.3})
    serving, admin = Tenancy(settings), Tenancy(settings)
    key, record = await admin.create_key("acme")
    assert (await serving.authenticate(f"Bearer {key}")).tenant == "acme"
    await admin.revoke(record.key_id)
    # Remembered for at most the TTL (so a request right after the revocation may still pass) ...
    await asyncio.sleep(0.35)
    with pytest.raises(Unauthorized):
        await serving.authenticate(f"Bearer {key}")
    for tenancy in (serving, admin):
        await tenancy.close()


async def test_a_tenant_limit_set_on_its_key_applies_in_the_same_round_trip(settings):
    tenancy = Tenancy(settings)
    await tenancy.create_key("roomy", rpm=5)
    for _ in range(5):
        await tenancy.admit("roomy")
    with pytest.raises(RateLimited, match="5 requests"):
        await tenancy.admit("roomy")
    await tenancy.close()


async def test_rate_limit_is_shared_by_replicas_and_per_tenant(settings):
    replicas = [Tenancy(settings), Tenancy(settings)]
    # 3 requests a minute in all, whichever replica takes them.
    for index in range(3):
        await replicas[index % 2].admit("busy")
    with pytest.raises(RateLimited) as raised:
        await replicas[1].admit("busy")
    assert 1 <= raised.value.retry_after <= 20 and raised.value.headers == {
        "retry-after": str(raised.value.retry_after)
    }
    await replicas[0].admit("quiet")  # another tenant is unaffected
    for replica in replicas:
        await replica.close()


async def test_an_admission_with_a_reserve_leaves_room_for_others(settings):
    tenancy = Tenancy(settings)
    await tenancy.create_key("mixed", rpm=10)
    # Batch lines (reserve 0.4) take the bucket down to 4 of 10 and no further ...
    for _ in range(6):
        await tenancy.admit("mixed", reserve=0.4)
    with pytest.raises(RateLimited):
        await tenancy.admit("mixed", reserve=0.4)
    # ... and what is left is the interactive requests'.
    for _ in range(4):
        await tenancy.admit("mixed")
    with pytest.raises(RateLimited):
        await tenancy.admit("mixed")
    await tenancy.close()


async def test_interactive_load_is_the_sum_of_live_replicas(settings):
    fast = settings.model_copy(update={"interactive_load_interval_s": 0.05})
    replicas = [InteractiveLoad(fast), InteractiveLoad(fast)]
    for replica in replicas:
        replica.replica += f"-{id(replica)}"
        replica.start()
    reader = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    with replicas[0].request(), replicas[1].request(), replicas[1].request():
        await asyncio.sleep(0.2)
        assert await interactive_in_flight(reader, 0.05) == 3
    await asyncio.sleep(0.2)
    assert await interactive_in_flight(reader, 0.05) == 0
    # A request shorter than the publishing interval is still seen (the peak is published).
    with replicas[0].request():
        pass
    seen = []
    for _ in range(15):
        seen.append(await interactive_in_flight(reader, 0.05))
        await asyncio.sleep(0.01)
    assert max(seen) == 1
    for replica in replicas:
        await replica.close()
    assert await interactive_in_flight(reader, 0.05) == 0
    await reader.aclose()


async def test_tokens_used_are_charged_and_then_limit(settings):
    tenancy = Tenancy(settings)
    _, _ = await tenancy.create_key("tok", rpm=100, tpm=50)
    await tenancy.admit("tok")
    await tenancy.debit("tok", 80, "record-1")  # overspent: the bucket is below zero
    with pytest.raises(RateLimited):
        await tenancy.admit("tok")
    await tenancy.close()


async def test_audit_appends_onto_a_remembered_head_rejoin_the_chain_another_replica_moved(settings):
    first, second = audit.AuditLog(settings), audit.AuditLog(settings)
    # Each remembers the head it wrote; the other's appends move the real head meanwhile.
    for index in range(6):
        log = first if index % 3 else second
        await log.append(audit.Outcome(request_id=f"r{index}", tenant="t", requested_model="auto"))
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    anchor, head = audit.redis_anchor_and_head(client)
    assert head[0] == 6 and audit.verify(audit.redis_entries(client), anchor, head) == (6, [])
    for log in (first, second):
        await log.close()


async def test_audit_appends_from_replicas_form_one_chain(settings):
    logs = [audit.AuditLog(settings) for _ in range(3)]
    outcomes = [audit.Outcome(request_id=f"r{i}", tenant="t", requested_model="auto") for i in range(30)]
    await asyncio.gather(*(logs[i % 3].append(outcome) for i, outcome in enumerate(outcomes)))
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    anchor, head = audit.redis_anchor_and_head(client)
    count, problems = audit.verify(audit.redis_entries(client), anchor, head)
    assert (count, problems, head[0]) == (30, [], 30)
    assert audit.verify(audit.file_entries(settings.audit_dir), None, None) == (30, [])
    for log in logs:
        await log.close()


async def test_retention_trims_old_records_and_keeps_an_anchor(settings):
    log = audit.AuditLog(settings)
    client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    for i in range(3):
        await log.append(audit.Outcome(request_id=f"old{i}", tenant="t", requested_model="auto"))
    await asyncio.sleep(0.01)
    # Everything so far is past a retention that ends now.
    short = audit.AuditLog(settings.model_copy(update={"audit_retention_days": 1e-9}))
    await short.append(audit.Outcome(request_id="new", tenant="t", requested_model="auto"))
    sync = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    anchor, head = audit.redis_anchor_and_head(sync)
    assert anchor[0] == 3 and head[0] == 4
    assert audit.verify(audit.redis_entries(sync), anchor, head) == (1, [])
    for closing in (log, short):
        await closing.close()
    await client.aclose()
