"""Tenants: API keys stored hashed in Redis, and per-tenant rate limits (requests and tokens per
minute) kept as token buckets in Redis, so every gateway replica draws from the same bucket.

Keys are ``llm_<key id>_<secret>``: the key id is public (listing, revoking), the whole key is
looked up by its SHA-256 only. A slow hash is not needed: the secret is 256 random bits, not
a password anyone could guess.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Unpack

import grpc
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from gateway.audit import ACCOUNTED
from gateway.errors import ErrorDetails, GatewayError, RedisUnavailable, Unauthorized
from gateway.settings import GatewaySettings
from mesh.redis_client import async_redis, decoded, decoded_fields

log = logging.getLogger(__name__)

KEY_PREFIX = "llm_"
_BY_HASH = "llmesh:apikey:hash:"  # + sha256 hex -> hash of the key's record
_BY_ID = "llmesh:apikey:id:"  # + key id -> sha256 hex
_TENANT_KEYS = "llmesh:tenant:keys:"  # + tenant -> set of key ids
_TENANT_LIMITS = "llmesh:tenant:limits:"  # + tenant -> hash rpm, tpm
_BUCKET = "llmesh:ratelimit:"  # + tenant + ":requests" / ":tokens"
# Valid keys remembered per process; past this many the memory starts over (a bound, not an LRU:
# the next lookups simply go to Redis again).
_KNOWN_KEYS_MAX = 10_000


class RateLimited(GatewayError):
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429
    error_type = "rate_limit_error"
    reason = "RATE_LIMIT_EXCEEDED"

    def __init__(self, message: str, retry_after_s: float, **kwargs: Unpack[ErrorDetails]) -> None:
        # Whole seconds, at least one: what the Retry-After header can say.
        self.retry_after = max(1, math.ceil(retry_after_s))
        kwargs.setdefault("metadata", {"retry_after": str(self.retry_after)})
        super().__init__(message, **kwargs)

    @property
    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after)}


class KeyNotFound(GatewayError):
    grpc_code = grpc.StatusCode.NOT_FOUND
    http_status = 404
    error_type = "invalid_request_error"
    reason = "KEY_NOT_FOUND"


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    tenant: str
    name: str
    created: int


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_bearer(authorization: str | None) -> str | None:
    scheme, _, presented = (authorization or "").partition(" ")
    return presented.strip() if scheme.lower() == "bearer" and presented.strip() else None


# Two buckets (requests, tokens) refilled continuously at capacity per minute, in one round
# trip with the tenant's own limits (KEYS[3], else the defaults ARGV[1], ARGV[2]). ARGV[3] is
# the mode: "admit" takes one request and needs a token level of at least one (the tokens a
# request will use are not known yet); "debit" takes the tokens used, and may go below zero,
# so a tenant that overspent waits until its bucket refills. ARGV[5] is the share of each
# bucket an admission must leave (batch lines leave room for the tenant's interactive
# requests). Redis's clock, not the replicas', so that every replica sees the same time.
# A debit names its outcome's record (KEYS[4], kept ARGV[6] seconds): a record charged before
# (an answer lost on the way, a record replayed from the spool) is not charged again.
# Returns whether admitted, the wait in seconds, and the limits applied.
_BUCKETS_LUA = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local mode = ARGV[3]
local own = redis.call('HMGET', KEYS[3], 'rpm', 'tpm')
local capacities = {tonumber(own[1]) or tonumber(ARGV[1]), tonumber(own[2]) or tonumber(ARGV[2])}
if mode == 'debit' then
  if redis.call('HSETNX', KEYS[4], 'charged', '1') == 0 then return {1, '0', capacities[1], capacities[2]} end
  redis.call('EXPIRE', KEYS[4], ARGV[6])
end
local levels = {}
local waits = {0, 0}
for i = 1, 2 do
  local capacity = capacities[i]
  local rate = capacity / 60
  local state = redis.call('HMGET', KEYS[i], 'level', 'ts')
  local level = tonumber(state[1]) or capacity
  local ts = tonumber(state[2]) or now
  level = math.min(capacity, level + math.max(0, now - ts) * rate)
  levels[i] = level
  local need = 1 + capacity * tonumber(ARGV[5] or 0)
  if mode == 'admit' and level < need then waits[i] = (need - level) / rate end
end
local allowed = (waits[1] == 0 and waits[2] == 0) and 1 or 0
if mode == 'admit' and allowed == 1 then levels[1] = levels[1] - 1 end
if mode == 'debit' then levels[2] = levels[2] - tonumber(ARGV[4]) end
for i = 1, 2 do
  redis.call('HSET', KEYS[i], 'level', tostring(levels[i]), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[i], 120)
end
return {allowed, tostring(math.max(waits[1], waits[2])), capacities[1], capacities[2]}
"""


class Tenancy:
    """API keys and rate limits; one per gateway process, shared by both edges."""

    def __init__(self, settings: GatewaySettings, client: aioredis.Redis | None = None) -> None:
        self.settings = settings
        self.redis = client or async_redis(settings, decode_responses=True)
        self._buckets = self.redis.register_script(_BUCKETS_LUA)
        # Key hash -> (record, monotonic time Redis last confirmed it): a valid key is looked up
        # in Redis at most once per api_key_cache_ttl_s, so a revocation takes effect within that;
        # while Redis is away, a key confirmed within auth_remember_s stays valid.
        self._known: dict[str, tuple[ApiKey, float]] = {}

    async def close(self) -> None:
        await self.redis.aclose()

    # -- keys ------------------------------------------------------------------------------

    async def create_key(
        self, tenant: str, name: str = "", rpm: int | None = None, tpm: int | None = None
    ) -> tuple[str, ApiKey]:
        """A new key (shown once; only its hash is stored) and its record."""
        key_id = secrets.token_hex(6)
        key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        record = ApiKey(key_id=key_id, tenant=tenant, name=name, created=int(time.time()))
        digest = hash_key(key)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(_BY_HASH + digest, mapping={k: str(v) for k, v in asdict(record).items()})
            pipe.set(_BY_ID + key_id, digest)
            pipe.sadd(_TENANT_KEYS + tenant, key_id)
            limits: dict[FieldT, EncodableT] = {k: str(v) for k, v in (("rpm", rpm), ("tpm", tpm)) if v is not None}
            if limits:
                pipe.hset(_TENANT_LIMITS + tenant, mapping=limits)
            await pipe.execute()
        return key, record

    async def list_keys(self, tenant: str | None = None) -> list[ApiKey]:
        if tenant is None:
            key_ids = [key.removeprefix(_BY_ID) async for key in self.redis.scan_iter(_BY_ID + "*")]
        else:
            key_ids = list(await self.redis.smembers(_TENANT_KEYS + tenant))
        records = [await self._record_by_id(key_id) for key_id in sorted(key_ids)]
        return sorted((r for r in records if r is not None), key=lambda r: (r.tenant, r.created, r.key_id))

    async def revoke(self, key_id: str, tenant: str | None = None) -> ApiKey:
        """Revoke a key; with ``tenant``, only one of that tenant's own (another tenant's key
        is reported as not found, so key ids of other tenants cannot be probed)."""
        record = await self._record_by_id(key_id)
        if record is None or (tenant is not None and record.tenant != tenant):
            raise KeyNotFound(f"No API key with id '{key_id}'.", param="key_id")
        stored = await self.redis.get(_BY_ID + key_id)
        if stored is None:
            # Revoked by another replica since its record was read.
            raise KeyNotFound(f"No API key with id '{key_id}'.", param="key_id")
        digest = decoded(stored)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(_BY_HASH + digest, _BY_ID + key_id)
            pipe.srem(_TENANT_KEYS + record.tenant, key_id)
            await pipe.execute()
        # This process stops at once; other replicas within api_key_cache_ttl_s.
        self._known.pop(digest, None)
        return record

    async def key_exists(self, key_id: str) -> bool:
        """Whether the key is still valid (not revoked)."""
        return bool(await self.redis.exists(_BY_ID + key_id))

    async def _record_by_id(self, key_id: str) -> ApiKey | None:
        digest = await self.redis.get(_BY_ID + key_id)
        fields = await self.redis.hgetall(_BY_HASH + decoded(digest)) if digest else {}
        return _record(decoded_fields(fields))

    async def authenticate(self, authorization: str | None) -> ApiKey:
        """The key's record, from an ``Authorization: Bearer <key>`` value; 401 otherwise.
        Without LLMESH_AUTH_REQUIRED, a request without a key is the default tenant's."""
        key = parse_bearer(authorization)
        if key is None or not key.startswith(KEY_PREFIX):
            if not self.settings.auth_required:
                return ApiKey("", self.settings.default_tenant, "", 0)
            raise Unauthorized("A valid API key is required (Authorization: Bearer <key>).")
        digest = hash_key(key)
        ttl = self.settings.api_key_cache_ttl_s
        known = self._known.get(digest)
        if known is not None and time.monotonic() - known[1] < ttl:
            return known[0]
        try:
            record = _record(decoded_fields(await self.redis.hgetall(_BY_HASH + digest)))
        except RedisError as error:
            # A key this process verified a moment ago stays valid while Redis is away: only
            # keys seen within the window, so revoking a key still takes effect at once
            # whenever Redis answers.
            remembered, at = self._known.get(digest, (None, 0.0))
            if remembered is not None and time.monotonic() - at <= self.settings.auth_remember_s:
                return remembered
            raise RedisUnavailable("The API key store is unavailable; please retry.") from error
        if record is None:
            # Unknown keys are never remembered: a new key works at once, and guesses fill nothing.
            self._known.pop(digest, None)
            raise Unauthorized("The API key is not valid (unknown or revoked).")
        if len(self._known) >= _KNOWN_KEYS_MAX:
            self._known.clear()
        self._known[digest] = (record, time.monotonic())
        return record

    # -- rate limits -----------------------------------------------------------------------

    async def admit(self, tenant: str, reserve: float = 0.0) -> None:
        """Take one request from the tenant's bucket, or 429 with how long to wait; with
        ``reserve``, only while the buckets stay above that share of their capacity."""
        if not self.settings.rate_limits_enabled:
            return
        try:
            allowed, wait, rpm, tpm = await self._buckets(
                keys=self._bucket_keys(tenant), args=[*self._defaults, "admit", 0, reserve]
            )
        except RedisError as error:
            if self.settings.rate_limits_fail_open:
                log.warning(
                    "rate limiter unavailable: admitting unlimited", extra={"tenant": tenant, "error": str(error)}
                )
                return
            raise RedisUnavailable("The rate limiter is unavailable; please retry.") from error
        if not int(allowed):
            raise RateLimited(
                f"Rate limit reached for tenant '{tenant}' ({rpm} requests and {tpm} tokens per minute).",
                float(wait),
            )

    async def debit(self, tenant: str, tokens: int, record_id: str) -> None:
        """Charge the tokens a finished request used, once per ``record_id`` however often asked."""
        if tokens <= 0 or not self.settings.rate_limits_enabled:
            return
        await self._buckets(
            keys=[*self._bucket_keys(tenant), ACCOUNTED + record_id],
            args=[*self._defaults, "debit", tokens, 0, self.settings.accounting_record_id_ttl_s],
        )

    @property
    def _defaults(self) -> list[int]:
        return [self.settings.tenant_requests_per_minute, self.settings.tenant_tokens_per_minute]

    @staticmethod
    def _bucket_keys(tenant: str) -> list[str]:
        return [f"{_BUCKET}{tenant}:requests", f"{_BUCKET}{tenant}:tokens", _TENANT_LIMITS + tenant]


def _record(fields: dict[str, str]) -> ApiKey | None:
    if not fields:
        return None
    return ApiKey(fields["key_id"], fields["tenant"], fields.get("name", ""), int(fields.get("created", 0)))
