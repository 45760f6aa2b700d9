"""Charging and auditing a finished request, off its path: the request puts its outcome on a
bounded queue and is answered; one background task per process charges the tokens and appends
the audit record, in the order the requests finished.

Nothing accepted is lost while Redis is away: an outcome that cannot be written is tried again,
with a backoff, until Redis answers; outcomes finishing meanwhile wait in the queue, and past its
bound (and whatever is left when the process stops) they go to a spool file (JSON lines) in the
audit directory, which the worker writes into Redis once it answers again, at start-up too.
Writing an outcome twice has the effect of writing it once (both writes are keyed by its record
id), so a write whose answer was lost, or a spool replayed twice, charges nothing twice. A
failure that is not Redis being away (a bug) is logged and the outcome dropped; it never turns an
answered request into a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from google.protobuf.json_format import MessageToDict, ParseDict
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.audit import AuditLog, Outcome
from gateway.tenancy import Tenancy
from llmesh.common.v1 import common_pb2

log = logging.getLogger(__name__)

# Retrying an outcome while Redis is away: the first wait, and the longest.
RETRY_FIRST_S = 0.1
RETRY_MAX_S = 2.0
# How long closing waits for the queue to drain before spooling what is left.
CLOSE_WAIT_S = 2.0
SPOOL_NAME = "accounting-spool.jsonl"


@dataclasses.dataclass
class Pending:
    """An outcome and which of its two writes are done (so a retry redoes only the other)."""

    outcome: Outcome
    charged: bool = False
    audited: bool = False

    def to_json(self) -> str:
        fields = {f.name: getattr(self.outcome, f.name) for f in dataclasses.fields(Outcome)}
        verdict = self.outcome.verdict
        fields["verdict"] = MessageToDict(verdict) if verdict is not None else None
        return json.dumps({"outcome": fields, "charged": self.charged, "audited": self.audited})

    @classmethod
    def from_json(cls, line: str) -> Pending:
        data = json.loads(line)
        fields = data["outcome"]
        if fields["verdict"] is not None:
            fields["verdict"] = ParseDict(fields["verdict"], common_pb2.SafetyVerdict())
        return cls(Outcome(**fields), charged=data["charged"], audited=data["audited"])


class Spool:
    """The spool file and the files being replayed, in one directory. Appending and claiming
    the file for a replay (a rename) hold a lock, so no line lands in a file already read."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / SPOOL_NAME

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / f"{SPOOL_NAME}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def append(self, pending: list[Pending]) -> None:
        if not pending:
            return
        with self._locked(), open(self.path, "a", encoding="utf-8") as out:
            out.writelines(item.to_json() + "\n" for item in pending)

    def claim(self) -> list[Path]:
        """The files to replay: the spool (renamed, so that new lines start a new file) and
        any claimed before and not finished (a process stopped during its replay)."""
        if not self.path.exists() and not self._claimed():
            return []
        with self._locked():
            if self.path.exists():
                self.path.rename(self.directory / f"{SPOOL_NAME}.{socket.gethostname()}-{os.getpid()}.{time.time_ns()}")
            return self._claimed()

    def _claimed(self) -> list[Path]:
        return sorted(self.directory.glob(f"{SPOOL_NAME}.*[0-9]"))


class Accounting:
    def __init__(
        self,
        tenancy: Tenancy,
        audit: AuditLog,
        max_pending: int,
        spool_dir: Path,
        charge_cache_hits: bool = True,
    ) -> None:
        self.tenancy = tenancy
        self.audit = audit
        # Whether an answer from the response cache costs the tenant its tokens (it is audited either way).
        self.charge_cache_hits = charge_cache_hits
        self.spool = Spool(spool_dir)
        self._queue: asyncio.Queue[Pending] = asyncio.Queue(maxsize=max_pending)
        self._worker: asyncio.Task | None = None
        # The outcome being written, if any: spooled with the queue when the process stops.
        self._current: Pending | None = None
        # Whether this process spooled since its last replay (the queue was full).
        self._spooled = False

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def record(self, outcome: Outcome) -> None:
        """Queue the outcome, or spool it when the queue is full."""
        if self._worker is None or self._worker.done():
            # Started on first use: the guard may be built before the event loop runs. Its
            # first work is the spool an earlier process left.
            self._worker = asyncio.create_task(self._drain_forever(), name="accounting")
        try:
            self._queue.put_nowait(Pending(outcome))
        except asyncio.QueueFull:
            self.spool.append([Pending(outcome)])
            self._spooled = True

    async def flush(self) -> None:
        """Wait until every outcome queued so far is charged and audited."""
        if self._worker is not None:
            await self._queue.join()

    async def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Drain the queue for at most ``wait_s``, then spool what is left and stop the worker."""
        if self._worker is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), wait_s)
        self._worker.cancel()
        await asyncio.gather(self._worker, return_exceptions=True)
        self._worker = None
        left = [self._current] if self._current is not None else []
        while not self._queue.empty():
            left.append(self._queue.get_nowait())
            self._queue.task_done()
        self._current = None
        if left:
            log.warning("Redis unavailable at shutdown: spooled outcomes", extra={"count": len(left)})
        self.spool.append(left)

    async def _drain_forever(self) -> None:
        await self._replay()
        while True:
            self._current = await self._queue.get()
            try:
                await self._patiently(self._current)
            finally:
                self._queue.task_done()
            # Not when cancelled: close spools it.
            self._current = None
            if self._spooled and self._queue.empty():
                self._spooled = False
                await self._replay()

    async def _replay(self) -> None:
        for path in await asyncio.to_thread(self.spool.claim):
            lines = await asyncio.to_thread(path.read_text, encoding="utf-8")
            count = 0
            for line in lines.splitlines():
                if line.strip():
                    # A stop during the replay leaves the file to the next one, which finds
                    # the outcomes written so far already written.
                    await self._patiently(Pending.from_json(line))
                    count += 1
            path.unlink(missing_ok=True)
            log.info("replayed spooled outcomes into Redis", extra={"count": count, "file": str(path)})

    async def _patiently(self, pending: Pending) -> None:
        """Write the outcome, waiting for Redis as long as it is away."""
        wait = RETRY_FIRST_S
        while True:
            try:
                await self._account(pending)
                return
            except (RedisConnectionError, RedisTimeoutError) as error:
                log.warning(
                    "Redis unavailable: accounting retries",
                    extra={"request_id": pending.outcome.request_id, "error": str(error), "retry_in_s": wait},
                )
            except Exception:
                # The worker must outlive any one record (a bug here would stop all accounting).
                log.exception("accounting failed", extra={"request_id": pending.outcome.request_id})
                return
            await asyncio.sleep(wait)
            wait = min(2 * wait, RETRY_MAX_S)

    async def _account(self, pending: Pending) -> None:
        outcome = pending.outcome
        if not pending.charged:
            free = outcome.cache in ("hit", "semantic") and not self.charge_cache_hits
            tokens = 0 if free else outcome.prompt_tokens + outcome.completion_tokens
            await self.tenancy.debit(outcome.tenant, tokens, outcome.record_id)
            pending.charged = True
        if not pending.audited:
            await self.audit.append(outcome)
            pending.audited = True
