"""The audit trail: one record per request in a hash chain, kept in a Redis stream and in
rotated files.

Each record carries ``seq`` (1, 2, ...), ``prev`` (the previous record's hash) and ``hash``
(SHA-256 of its own canonical JSON without ``hash``). Editing a record breaks its hash,
deleting one leaves a gap in ``seq``, inserting one breaks the next record's ``prev``, and
the head (last seq and hash, kept apart from the stream) exposes records cut off the end.

Several gateway replicas append to one chain: a replica reads the head, hashes its record
locally (Redis's Lua has no SHA-256) and appends with a script that writes only if the head
is still the one it read, retrying otherwise, so the chain never forks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import redis
import redis.asyncio as aioredis
from google.protobuf.json_format import MessageToDict
from redis.exceptions import RedisError

from gateway.settings import GatewaySettings
from llmesh.common.v1 import common_pb2
from mesh.redis_client import async_redis, decoded
from textkit.safety import pii

log = logging.getLogger(__name__)

STREAM = "llmesh:audit:stream"
HEAD = "llmesh:audit:head"  # hash: seq, hash of the newest record
# The last record trimmed away by retention: where the remaining chain starts.
ANCHOR = "llmesh:audit:anchor"
# + an outcome's record_id -> hash: "charged" once its tokens were charged, "audited" (the stream
# entry id) once its record is in the chain; what makes writing an outcome again harmless.
ACCOUNTED = "llmesh:accounted:"
GENESIS = "0" * 64
_APPEND_ATTEMPTS = 50

# ARGV: expected head seq, new seq, record JSON, new hash, oldest stream id to keep, expected
# head hash ('' before the first record), seconds to remember the record id. Both seq and hash
# must match: a replica appends onto the head it remembers without reading it first. A record
# id appended before (an answer lost on the way, a record replayed) is not appended again: the
# record stored then is returned (3 as the first value).
_APPEND_LUA = """
local appended = redis.call('HGET', KEYS[4], 'audited')
if appended then
  local stored = redis.call('XRANGE', KEYS[1], appended, appended)
  return {3, '', '', stored[1] and stored[1][2][4] or ''}
end
local head = redis.call('HMGET', KEYS[2], 'seq', 'hash')
local seq = head[1] or '0'
if seq ~= ARGV[1] or (head[2] or '') ~= ARGV[6] then return {0, seq, head[2] or ''} end
local entry = redis.call('XADD', KEYS[1], '*', 'seq', ARGV[2], 'record', ARGV[3])
redis.call('HSET', KEYS[2], 'seq', ARGV[2], 'hash', ARGV[4])
redis.call('HSET', KEYS[4], 'audited', entry)
redis.call('EXPIRE', KEYS[4], ARGV[7])
local cut = redis.call('XREVRANGE', KEYS[1], '(' .. ARGV[5], '-', 'COUNT', 1)
if #cut > 0 then
  local last = cjson.decode(cut[1][2][4])
  redis.call('HSET', KEYS[3], 'seq', tostring(last['seq']), 'hash', last['hash'])
  redis.call('XTRIM', KEYS[1], 'MINID', ARGV[5])
end
return {1, ARGV[2], ARGV[4]}
"""


def canonical(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(record: dict) -> str:
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


@dataclass(frozen=True)
class Outcome:
    """What the audit keeps of one finished (or failed) request."""

    request_id: str
    tenant: str
    requested_model: str
    model: str = ""
    route_reason: str = ""
    finish_reason: str = ""
    # "ok", or the error's reason (e.g. UPSTREAM_UNAVAILABLE).
    status: str = "ok"
    verdict: common_pb2.SafetyVerdict | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    experiments: dict[str, str] = field(default_factory=dict)
    prompt: str = ""
    output: str = ""
    # The response cache's status (gateway/response_cache.py): "hit" when it answered.
    cache: str = ""
    # Charging and auditing the outcome twice (a write retried, replayed from the spool) has
    # the effect of doing it once: the writes are keyed by this id.
    record_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # When the request finished (Unix time): its record's time, however late it is written.
    finished_at: float = field(default_factory=time.time)


def build_record(outcome: Outcome, include_text: bool) -> dict:
    """The record's content, without its place in the chain (seq, prev, hash)."""
    record = {
        "time": datetime.fromtimestamp(outcome.finished_at, UTC).isoformat(timespec="milliseconds"),
        "record_id": outcome.record_id,
        "tenant": outcome.tenant,
        "request_id": outcome.request_id,
        "requested_model": outcome.requested_model,
        "model": outcome.model,
        "route_reason": outcome.route_reason,
        "finish_reason": outcome.finish_reason,
        "status": outcome.status,
        "safety": MessageToDict(outcome.verdict) if outcome.verdict is not None else {},
        "usage": {"prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens},
        "latency_ms": round(outcome.latency_ms, 1),
        "experiments": dict(outcome.experiments),
    }
    if outcome.cache:
        record["cache"] = outcome.cache
    if include_text:
        # Redacted here whatever the services' PII policy: the trail outlives the request.
        record["prompt"] = pii.redact(outcome.prompt, pii.find_pii(outcome.prompt))
        record["output"] = pii.redact(outcome.output, pii.find_pii(outcome.output))
    return record


class AuditFiles:
    """This process's JSON-lines file under ``directory``, rotated by size; rotated files older
    than the retention are deleted. Each replica writes its own file (no shared file
    locking); ``seq`` orders the records of all files into the one chain."""

    def __init__(self, directory: Path, max_bytes: int, retention_days: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.retention_s = retention_days * 86400
        self.name = f"audit-{socket.gethostname()}-{os.getpid()}"
        # Bytes in the current file; None until the first append looks at the file.
        self._size: int | None = None

    @property
    def current(self) -> Path:
        return self.directory / f"{self.name}.jsonl"

    def append(self, record: dict) -> None:
        path = self.current
        if self._size is None:
            # Once per process: after that only this process writes its file, so its size is
            # tracked here instead of being asked of the file system on every request.
            self.directory.mkdir(parents=True, exist_ok=True)
            self._size = path.stat().st_size if path.exists() else 0
        if self._size >= self.max_bytes:
            path.rename(self.directory / f"{self.name}.{time.strftime('%Y%m%dT%H%M%S')}.{time.time_ns()}.jsonl")
            self._size = 0
            self._expire()
        line = canonical(record) + b"\n"
        with open(path, "ab") as out:
            out.write(line)
        self._size += len(line)

    def _expire(self) -> None:
        cutoff = time.time() - self.retention_s
        for old in self.directory.glob("audit-*.*.jsonl"):
            if old.stat().st_mtime < cutoff:
                old.unlink(missing_ok=True)


class AuditLog:
    def __init__(self, settings: GatewaySettings, client: aioredis.Redis | None = None) -> None:
        self.settings = settings
        self.enabled = settings.audit_enabled
        self.redis = client or async_redis(settings, decode_responses=True)
        self._append = self.redis.register_script(_APPEND_LUA)
        self.files = AuditFiles(settings.audit_dir, settings.audit_file_max_bytes, settings.audit_retention_days)
        # The head this process last wrote or saw: the next append tries it without asking
        # (one round trip), and the script answers the real head if another replica moved it.
        self._head: tuple[int, str] | None = None

    async def close(self) -> None:
        await self.redis.aclose()

    async def append(self, outcome: Outcome) -> dict | None:
        """Chain and store the outcome's record; returns it (None when auditing is off)."""
        if not self.enabled:
            return None
        content = build_record(outcome, self.settings.audit_include_text)
        keep_from_ms = int((time.time() - self.settings.audit_retention_days * 86400) * 1000)
        if self._head is None:
            stored_seq, stored_hash = await self.redis.hmget(HEAD, "seq", "hash")
            self._head = int(stored_seq or 0), decoded(stored_hash or GENESIS)
        seq, prev = self._head
        for _ in range(_APPEND_ATTEMPTS):
            record = {**content, "seq": seq + 1, "prev": prev}
            record["hash"] = record_hash(record)
            done, head_seq, head_hash, *stored = await self._append(
                keys=[STREAM, HEAD, ANCHOR, ACCOUNTED + outcome.record_id],
                args=[
                    str(seq),
                    str(seq + 1),
                    canonical(record).decode(),
                    record["hash"],
                    keep_from_ms,
                    prev if seq else "",
                    self.settings.accounting_record_id_ttl_s,
                ],
            )
            if int(done) == 3:
                # Appended before, but its answer was lost on the way (no file has it yet):
                # the record stored then goes to the file; the head is read again next time.
                self._head = None
                stored_record = _parse(stored[0]) if stored and stored[0] else None
                if stored_record is not None:
                    self.files.append(stored_record)
                return stored_record
            if int(done):
                self._head = seq + 1, record["hash"]
                self.files.append(record)
                return record
            # Another replica appended first: chain onto its record.
            seq, prev = int(head_seq), head_hash or GENESIS
            self._head = seq, prev
        raise RedisError(f"audit append lost the race {_APPEND_ATTEMPTS} times")


# -- verification ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    kind: str  # edited | inserted | deleted
    seq: int
    where: str  # stream entry id or file:line
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: record seq {self.seq} ({self.where}): {self.detail}"


@dataclass(frozen=True)
class Entry:
    where: str
    record: dict


def verify(
    entries: Iterable[Entry], anchor: tuple[int, str] | None, head: tuple[int, str] | None
) -> tuple[int, list[Problem]]:
    """Walk the chain in order; return how many records were read and every break found."""
    problems: list[Problem] = []
    expected_seq: int | None
    expected_prev: str | None
    expected_seq, expected_prev = (anchor[0] + 1, anchor[1]) if anchor else (None, GENESIS)
    last: Entry | None = None
    count = 0
    for entry in entries:
        count += 1
        record = entry.record
        seq = int(record.get("seq", -1))
        if expected_seq is None:
            # No anchor: the chain must start at the beginning.
            expected_seq = 1
        if record_hash(record) != record.get("hash"):
            problems.append(Problem("edited", seq, entry.where, "its content does not match its hash"))
        elif seq > expected_seq:
            problems.append(
                Problem("deleted", seq, entry.where, f"records {expected_seq}..{seq - 1} before it are missing")
            )
        elif seq < expected_seq:
            problems.append(Problem("inserted", seq, entry.where, f"seq {seq} comes after seq {expected_seq - 1}"))
        elif record.get("prev") != expected_prev:
            problems.append(
                Problem(
                    "inserted",
                    seq,
                    entry.where,
                    "it does not link to the record before it (a record was inserted or changed there)",
                )
            )
        expected_seq, expected_prev, last = seq + 1, record.get("hash"), entry
    if head is not None and head[0] > 0:
        if last is None:
            problems.append(Problem("deleted", head[0], "-", "the chain is empty but its head says otherwise"))
        elif int(last.record.get("seq", -1)) < head[0]:
            first_missing = int(last.record["seq"]) + 1
            problems.append(
                Problem("deleted", head[0], "end", f"records {first_missing}..{head[0]} at the end are missing")
            )
        elif last.record.get("hash") != head[1]:
            problems.append(
                Problem("edited", int(last.record["seq"]), last.where, "the last record does not match the head")
            )
    return count, problems


def redis_entries(client: redis.Redis, batch: int = 1000) -> Iterator[Entry]:
    start = "-"
    while True:
        rows = client.xrange(STREAM, min=start, count=batch)
        if rows is None:
            raise RedisError(f"XRANGE of {STREAM} answered nil instead of a list")
        for entry_id, fields in rows:
            if entry_id is None or fields is None:
                raise RedisError(f"XRANGE of {STREAM} answered an entry without an id or fields")
            yield Entry(f"stream id {decoded(entry_id)}", _parse(decoded(fields.get("record", ""))))
        if len(rows) < batch:
            return
        start = "(" + decoded(rows[-1][0] or "")


def file_entries(directory: Path) -> list[Entry]:
    """Every record of every replica's files, in chain order."""
    entries = [
        Entry(f"{path.name}:{number}", _parse(line))
        for path in sorted(directory.glob("audit-*.jsonl"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if line.strip()
    ]
    return sorted(entries, key=lambda entry: int(entry.record.get("seq", -1)))


def redis_anchor_and_head(client: redis.Redis) -> tuple[tuple[int, str] | None, tuple[int, str] | None]:
    def pair(key: str) -> tuple[int, str] | None:
        fields = client.hgetall(key)
        return (int(fields["seq"]), decoded(fields["hash"])) if fields else None

    return pair(ANCHOR), pair(HEAD)


def _parse(text: str) -> dict:
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return {"unparseable": text}
    return record if isinstance(record, dict) else {"unparseable": text}
