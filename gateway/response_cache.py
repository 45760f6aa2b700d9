"""The exact response cache: the generated tokens of a deterministic request (temperature 0, or
a fixed seed), kept in Redis and answered again to the same tenant's same request.

The key is a hash of everything that decides the answer: the tenant, the requested model, the
operation, the whole conversation (or prompt) and every sampling parameter after the gateway's
defaults. What is kept is the serving model's tokens, not text: a hit goes through postprocess
again (``Pipeline``), so the output guard's current rules decide what leaves, as for a fresh
answer. Entries live ``response_cache_ttl_s``; past ``response_cache_max_entries`` the oldest go.

Not cached: requests with tools or log-probs, requests under an A/B experiment (a cached answer
would cross variants), and answers that were blocked, failed or cut by a client.

The semantic cache (opt-in per tenant) sits behind the exact one: a single-turn question that
misses is embedded, and the cached answer of the most similar earlier question (same tenant,
model and sampling parameters) above the threshold answers it. A conversation never takes an
answer from a question: only its exact key, the whole conversation, can match it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.records import ChatInput
from gateway.settings import GatewaySettings
from llmesh.common.v1 import common_pb2
from mesh.redis_client import binary, decoded

log = logging.getLogger(__name__)

_ENTRY = "llmesh:cache:entry:"  # + sha256 hex -> JSON entry
_INDEX = "llmesh:cache:index"  # sorted set: entry key by time stored
# + hash of (tenant, model, operation, sampling) -> hash: exact key -> float32 question embedding
_QUESTIONS = "llmesh:cache:questions:"

# KEYS: entry, index. ARGV: entry JSON, TTL s, most entries. Stores the entry, forgets index
# members whose entries expired, then drops the oldest entries beyond the bound.
_PUT_LUA = """
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('ZADD', KEYS[2], now, KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[2]))
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
if excess > 0 then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, excess - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, excess - 1)
  redis.call('DEL', unpack(oldest))
end
return math.max(excess, 0)
"""

HIT = "hit"
# Answered with the cached answer of a similar earlier question (the semantic cache).
SEMANTIC = "semantic"
MISS = "miss"
BYPASS = "bypass"
# Says which of them a response was (REST header, gRPC initial metadata).
CACHE_HEADER = "x-llmesh-cache"


@dataclass(frozen=True)
class CachedAnswer:
    index: int
    token_ids: Sequence[int]
    # The engine's finish reason; postprocess derives the released one again.
    finish_reason: common_pb2.FinishReason


@dataclass(frozen=True)
class CachedResponse:
    model: str
    route_reason: str
    usage: common_pb2.Usage
    answers: Sequence[CachedAnswer]

    def to_json(self) -> str:
        return json.dumps(
            {
                "model": self.model,
                "route_reason": self.route_reason,
                "usage": [self.usage.prompt_tokens, self.usage.completion_tokens, self.usage.total_tokens],
                "answers": [[a.index, list(a.token_ids), a.finish_reason] for a in self.answers],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> CachedResponse:
        data = json.loads(text)
        prompt, completion, total = data["usage"]
        return cls(
            data["model"],
            data["route_reason"],
            common_pb2.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=total),
            [CachedAnswer(index, tokens, reason) for index, tokens, reason in data["answers"]],
        )


def deterministic(sampling: common_pb2.SamplingParams) -> bool:
    return (sampling.HasField("temperature") and sampling.temperature == 0) or sampling.HasField("seed")


def question(request: ChatInput) -> str | None:
    """The text the semantic cache compares: a single-turn request's one user message (or its
    completion prompt); None for a conversation, which only the exact cache may answer (an
    answer must never cross into another conversation)."""
    if request.prompt is not None:
        return request.prompt
    if len(request.messages) == 1 and request.messages[0].role == common_pb2.ROLE_USER:
        return request.messages[0].content
    return None


def questions_key(request: ChatInput, sampling: common_pb2.SamplingParams, tenant: str) -> str:
    """Where a tenant's questions for this model and these sampling parameters are kept."""
    digest = hashlib.sha256()
    for part in (tenant, request.model, request.operation):
        digest.update(part.encode())
        digest.update(b"\0")
    digest.update(sampling.SerializeToString(deterministic=True))
    return _QUESTIONS + digest.hexdigest()


@dataclass(frozen=True)
class Question:
    """A single-turn request's question, embedded, for the semantic cache."""

    index: str  # questions_key(...)
    vector: bytes  # float32, unit length


def cache_key(request: ChatInput, sampling: common_pb2.SamplingParams, tenant: str) -> str:
    """The hash of everything that decides the answer (``sampling`` with the defaults filled)."""
    digest = hashlib.sha256()
    for part in (tenant, request.model, request.operation, request.prompt if request.prompt is not None else "\0"):
        digest.update(part.encode())
        digest.update(b"\0")
    for message in request.messages:
        digest.update(message.SerializeToString(deterministic=True))
        digest.update(b"\0")
    digest.update(sampling.SerializeToString(deterministic=True))
    return digest.hexdigest()


class ResponseCache:
    """One per gateway process (held by the pipeline)."""

    def __init__(self, settings: GatewaySettings, client: aioredis.Redis | None = None) -> None:
        self.settings = settings
        self.enabled = settings.response_cache_enabled
        self.redis = client or aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
        self._put = self.redis.register_script(_PUT_LUA)
        # Embeddings are bytes: a client that does not decode replies.
        self._binary = aioredis.Redis.from_url(settings.redis_url)
        # Stores run after the answer; kept here so close() can wait for them.
        self._stores: set[asyncio.Task] = set()

    def semantic_for(self, tenant: str) -> bool:
        return tenant in self.settings.semantic_cache_tenants

    async def similar(self, question: Question) -> tuple[str, float] | None:
        """The exact key of the most similar earlier question, if similar enough, and how similar."""
        import numpy as np

        try:
            stored = await self._binary.hgetall(question.index)
        except RedisError:
            log.warning("response cache unavailable", exc_info=True)
            return None
        if not stored:
            return None
        keys = list(stored)
        vectors = np.frombuffer(b"".join(binary(stored[k]) for k in keys), dtype=np.float32).reshape(len(keys), -1)
        similarities = vectors @ np.frombuffer(question.vector, dtype=np.float32)
        best = int(np.argmax(similarities))
        if similarities[best] < self.settings.semantic_cache_min_similarity:
            return None
        return decoded(keys[best]), float(similarities[best])

    def status(self, request: ChatInput, sampling: common_pb2.SamplingParams, experiments: bool) -> str:
        """MISS when the request may be answered from the cache (then looked up), BYPASS when
        its caller said no-cache, "" when it is not cacheable."""
        if not self.enabled or request.tools or sampling.logprobs or sampling.top_logprobs or experiments:
            return ""
        if not deterministic(sampling):
            return ""
        return MISS if request.use_cache else BYPASS

    async def get(self, key: str) -> CachedResponse | None:
        try:
            text = await self.redis.get(_ENTRY + key)
        except RedisError:
            # The cache is an optimisation: without Redis the request is simply generated.
            log.warning("response cache unavailable", exc_info=True)
            return None
        return CachedResponse.from_json(text) if text else None

    def store_later(self, key: str, response: CachedResponse, question: Question | None = None) -> None:
        """Store in the background: the answer never waits for the cache."""
        task = asyncio.create_task(self._store(key, response, question))
        self._stores.add(task)
        task.add_done_callback(self._stores.discard)

    async def _store(self, key: str, response: CachedResponse, question: Question | None) -> None:
        try:
            await self._put(
                keys=[_ENTRY + key, _INDEX],
                args=[response.to_json(), self.settings.response_cache_ttl_s, self.settings.response_cache_max_entries],
            )
            # A question whose entry has expired or was dropped finds nothing: a miss, as it should.
            limit = self.settings.semantic_cache_max_entries
            if question is not None and await self._binary.hlen(question.index) < limit:
                await self._binary.hset(question.index, key, question.vector)
                await self._binary.expire(question.index, self.settings.response_cache_ttl_s)
        except RedisError:
            log.warning("could not store a response in the cache", exc_info=True)

    async def close(self) -> None:
        if self._stores:
            await asyncio.gather(*self._stores, return_exceptions=True)
        await self.redis.aclose()
        await self._binary.aclose()
