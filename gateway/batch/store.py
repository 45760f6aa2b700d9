"""Files and batches in Redis, each owned by one tenant, and every batch's results.

Keys:

- ``llmesh:file:{id}`` hash: the file's record (tenant, name, size, purpose, requests, endpoint);
  ``llmesh:files:{tenant}`` sorted set of the tenant's file ids in creation order;
  ``llmesh:file-users:{id}`` set of unfinished batches that read the file (it cannot be deleted
  while one does);
- ``llmesh:batch:{id}`` hash: the batch's record, status and counters;
  ``llmesh:batches:{tenant}`` sorted set of the tenant's batch ids;
- ``llmesh:batch:{id}:results`` hash: request index -> its output line, prefixed with ``o``
  (output file) or ``e`` (error file). A result is written with HSETNX in the same script that
  counts it, so a request run twice (its task redelivered) keeps its first result and is
  counted once; the output files are assembled from this hash.

Looking an object up always names the tenant: another tenant's id reads as absent.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.errors import RedisUnavailable
from mesh.redis_client import async_redis, decoded, decoded_all, decoded_fields
from mesh.settings import MeshSettings

_FILE = "llmesh:file:"
_TENANT_FILES = "llmesh:files:"
_FILE_USERS = "llmesh:file-users:"
_BATCH = "llmesh:batch:"
_TENANT_BATCHES = "llmesh:batches:"
_SEQUENCE = "llmesh:batch-sequence"

OUTPUT = "o"
ERROR = "e"

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
# Where a cancel is still possible.
CANCELLABLE = frozenset({"validating", "in_progress"})

_TIMESTAMPS = (
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)

# KEYS: batch, results. ARGV: index, value, outcome (completed | failed | expired | cancelled),
# input tokens, output tokens, now. Returns the number of requests with a result.
_RECORD_LUA = """
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 1 then
  local field = ARGV[3] == 'completed' and 'completed' or 'failed'
  redis.call('HINCRBY', KEYS[1], field, 1)
  if ARGV[3] == 'expired' or ARGV[3] == 'cancelled' then redis.call('HINCRBY', KEYS[1], ARGV[3], 1) end
  redis.call('HINCRBY', KEYS[1], 'input_tokens', ARGV[4])
  redis.call('HINCRBY', KEYS[1], 'output_tokens', ARGV[5])
  redis.call('HSET', KEYS[1], 'updated_at', ARGV[6])
end
return redis.call('HLEN', KEYS[2])
"""

# KEYS: batch. ARGV: allowed current statuses (comma separated), new status, the timestamp
# field to set, now, then field/value pairs to set with it. Returns {changed, previous status}.
_TRANSITION_LUA = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {0, ''} end
for allowed in string.gmatch(ARGV[1], '[^,]+') do
  if allowed == status then
    redis.call('HSET', KEYS[1], 'status', ARGV[2], ARGV[3], ARGV[4])
    for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
    return {1, status}
  end
end
return {0, status}
"""


@dataclass(frozen=True)
class FileRecord:
    id: str
    tenant: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    # Batch input files: how many requests, and for which endpoint.
    requests: int = 0
    endpoint: str = ""

    def to_openai(self) -> dict:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> FileRecord:
        return cls(
            id=fields["id"],
            tenant=fields["tenant"],
            bytes=int(fields["bytes"]),
            created_at=int(fields["created_at"]),
            filename=fields["filename"],
            purpose=fields["purpose"],
            requests=int(fields.get("requests", 0)),
            endpoint=fields.get("endpoint", ""),
        )


@dataclass(frozen=True)
class BatchRecord:
    fields: Mapping[str, str]

    @property
    def id(self) -> str:
        return self.fields["id"]

    @property
    def tenant(self) -> str:
        return self.fields["tenant"]

    @property
    def key_id(self) -> str:
        return self.fields.get("key_id", "")

    @property
    def status(self) -> str:
        return self.fields["status"]

    @property
    def input_file_id(self) -> str:
        return self.fields["input_file_id"]

    @property
    def endpoint(self) -> str:
        return self.fields["endpoint"]

    @property
    def total(self) -> int:
        return int(self.fields.get("total", 0))

    @property
    def expires_at(self) -> int:
        return int(self.fields["expires_at"])

    def count(self, name: str) -> int:
        return int(self.fields.get(name, 0))

    def to_openai(self) -> dict:
        fields = self.fields
        input_tokens, output_tokens = self.count("input_tokens"), self.count("output_tokens")
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": json.loads(fields["errors"]) if fields.get("errors") else None,
            "input_file_id": self.input_file_id,
            "completion_window": fields["completion_window"],
            "status": self.status,
            "output_file_id": fields.get("output_file_id") or None,
            "error_file_id": fields.get("error_file_id") or None,
            "created_at": int(fields["created_at"]),
            "expires_at": self.expires_at,
            **{name: int(fields[name]) if fields.get(name) else None for name in _TIMESTAMPS},
            "request_counts": {
                "total": self.total,
                "completed": self.count("completed"),
                "failed": self.count("failed"),
            },
            "usage": {
                "input_tokens": input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + output_tokens,
            },
            "metadata": json.loads(fields["metadata"]) if fields.get("metadata") else None,
        }


@contextmanager
def _available(what: str) -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError) as error:
        raise RedisUnavailable(f"The {what} store is unavailable; please retry.") from error


def _results_key(batch_id: str) -> str:
    return f"{_BATCH}{batch_id}:results"


class BatchStore:
    """Used by the REST edge (whose callers get 503 when Redis is away) and by the workers."""

    def __init__(self, settings: MeshSettings, client: aioredis.Redis | None = None) -> None:
        self.redis = client or async_redis(settings, decode_responses=True)
        self._record = self.redis.register_script(_RECORD_LUA)
        self._transition = self.redis.register_script(_TRANSITION_LUA)

    async def close(self) -> None:
        await self.redis.aclose()

    # -- files -----------------------------------------------------------------------------

    async def add_file(self, record: FileRecord) -> None:
        with _available("file"):
            sequence = await self.redis.incr(_SEQUENCE)
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(_FILE + record.id, mapping={k: str(v) for k, v in asdict(record).items()})
                pipe.zadd(_TENANT_FILES + record.tenant, {record.id: sequence})
                await pipe.execute()

    async def file(self, tenant: str, file_id: str) -> FileRecord | None:
        with _available("file"):
            fields = decoded_fields(await self.redis.hgetall(_FILE + file_id))
        if not fields or fields.get("tenant") != tenant:
            return None
        return FileRecord.from_fields(fields)

    async def files(
        self, tenant: str, *, purpose: str | None, after: str | None, limit: int, descending: bool
    ) -> tuple[list[FileRecord], bool]:
        """One page of the tenant's files and whether more follow."""
        records: list[FileRecord] = []
        with _available("file"):
            ids = await self._page(_TENANT_FILES + tenant, after, descending)
            for file_id in ids:
                fields = decoded_fields(await self.redis.hgetall(_FILE + file_id))
                if fields and (purpose is None or fields.get("purpose") == purpose):
                    records.append(FileRecord.from_fields(fields))
                    if len(records) > limit:
                        break
        return records[:limit], len(records) > limit

    async def file_users(self, file_id: str) -> set[str]:
        with _available("file"):
            return set(decoded_all(await self.redis.smembers(_FILE_USERS + file_id)))

    async def delete_file(self, record: FileRecord) -> None:
        with _available("file"):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(_FILE + record.id)
                pipe.zrem(_TENANT_FILES + record.tenant, record.id)
                await pipe.execute()

    # -- batches ---------------------------------------------------------------------------

    async def add_batch(self, fields: Mapping[str, Any]) -> BatchRecord:
        values = {k: str(v) for k, v in fields.items()}
        with _available("batch"):
            sequence = await self.redis.incr(_SEQUENCE)
            async with self.redis.pipeline(transaction=True) as pipe:
                # A fresh dict: hset's mapping is a Mapping invariant in its key type, which dict[str, str] is not.
                pipe.hset(_BATCH + values["id"], mapping={field: value for field, value in values.items()})
                pipe.zadd(_TENANT_BATCHES + values["tenant"], {values["id"]: sequence})
                pipe.sadd(_FILE_USERS + values["input_file_id"], values["id"])
                await pipe.execute()
        return BatchRecord(values)

    async def remove_batch(self, record: BatchRecord) -> None:
        """Undoes add_batch (a batch that could not be queued)."""
        with _available("batch"):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(_BATCH + record.id)
                pipe.zrem(_TENANT_BATCHES + record.tenant, record.id)
                pipe.srem(_FILE_USERS + record.input_file_id, record.id)
                await pipe.execute()

    async def batch(self, tenant: str, batch_id: str) -> BatchRecord | None:
        record = await self.any_batch(batch_id)
        return record if record is not None and record.tenant == tenant else None

    async def any_batch(self, batch_id: str) -> BatchRecord | None:
        """Whoever's it is (workers act for the batch's own tenant)."""
        with _available("batch"):
            fields = decoded_fields(await self.redis.hgetall(_BATCH + batch_id))
        return BatchRecord(fields) if fields else None

    async def batches(self, tenant: str, *, after: str | None, limit: int) -> tuple[list[BatchRecord], bool]:
        records: list[BatchRecord] = []
        with _available("batch"):
            for batch_id in await self._page(_TENANT_BATCHES + tenant, after, descending=True):
                fields = decoded_fields(await self.redis.hgetall(_BATCH + batch_id))
                if fields:
                    records.append(BatchRecord(fields))
                    if len(records) > limit:
                        break
        return records[:limit], len(records) > limit

    async def _page(self, index: str, after: str | None, descending: bool) -> list[str]:
        if after is None:
            ids = await (self.redis.zrevrange(index, 0, -1) if descending else self.redis.zrange(index, 0, -1))
            return decoded_all(ids)
        score = await self.redis.zscore(index, after)
        if score is None:
            return []
        if descending:
            return decoded_all(await self.redis.zrevrangebyscore(index, f"({score}", "-inf"))
        return decoded_all(await self.redis.zrangebyscore(index, f"({score}", "+inf"))

    async def transition(
        self, batch_id: str, allowed: frozenset[str] | set[str], status: str, **fields: Any
    ) -> tuple[bool, str]:
        """Moves the batch to ``status`` (stamping ``<status>_at``) only from one of ``allowed``;
        returns whether it moved and the status it had."""
        now = int(time.time())
        extra = [str(item) for pair in fields.items() for item in pair]
        with _available("batch"):
            changed, previous = await self._transition(
                keys=[_BATCH + batch_id], args=[",".join(sorted(allowed)), status, f"{status}_at", now, *extra]
            )
        return bool(int(changed)), previous

    async def update(self, batch_id: str, **fields: Any) -> None:
        with _available("batch"):
            await self.redis.hset(_BATCH + batch_id, mapping={k: str(v) for k, v in fields.items()})

    async def increment(self, batch_id: str, field: str) -> None:
        with _available("batch"):
            await self.redis.hincrby(_BATCH + batch_id, field, 1)

    async def release_input(self, record: BatchRecord) -> None:
        """The batch no longer reads its input file (it has finished)."""
        with _available("file"):
            await self.redis.srem(_FILE_USERS + record.input_file_id, record.id)

    # -- results ---------------------------------------------------------------------------

    async def record(
        self, batch_id: str, index: int, value: str, outcome: str, input_tokens: int = 0, output_tokens: int = 0
    ) -> int:
        """Keeps the request's first result only; returns how many requests have one."""
        with _available("batch"):
            return int(
                await self._record(
                    keys=[_BATCH + batch_id, _results_key(batch_id)],
                    args=[index, value, outcome, input_tokens, output_tokens, int(time.time())],
                )
            )

    async def without_result(self, batch_id: str, indices: list[int]) -> list[int]:
        if not indices:
            return []
        with _available("batch"):
            present = await self.redis.hmget(_results_key(batch_id), [str(i) for i in indices])
        return [index for index, value in zip(indices, present, strict=True) if value is None]

    async def result_count(self, batch_id: str) -> int:
        with _available("batch"):
            return int(await self.redis.hlen(_results_key(batch_id)))

    async def results(self, batch_id: str, total: int, page: int = 1000) -> AsyncIterator[tuple[int, str | None]]:
        """Every request's result in input order (None for one without a result)."""
        for start in range(0, total, page):
            indices = list(range(start, min(total, start + page)))
            with _available("batch"):
                values = await self.redis.hmget(_results_key(batch_id), [str(i) for i in indices])
            for index, value in zip(indices, values, strict=True):
                yield index, None if value is None else decoded(value)

    async def drop_results(self, batch_id: str) -> None:
        with _available("batch"):
            await self.redis.delete(_results_key(batch_id))
