"""Charging and auditing a finished request, off its path: the request puts its outcome on a
bounded queue and is answered; one background task per process charges the tokens and appends
the audit record, in the order the requests finished.

Nothing is lost: a full queue makes the next request wait for room (back-pressure, never a
drop), and ``close`` drains the queue before the process lets go of Redis. A failure to charge
or to audit is logged loudly, as it was when this ran on the request's path; it never turns an
answered request into a failure.
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from gateway.audit import AuditLog, Outcome
from gateway.tenancy import Tenancy

log = logging.getLogger(__name__)


class Accounting:
    def __init__(self, tenancy: Tenancy, audit: AuditLog, max_pending: int, charge_cache_hits: bool = True) -> None:
        self.tenancy = tenancy
        self.audit = audit
        # Whether an answer from the response cache costs the tenant its tokens (it is audited either way).
        self.charge_cache_hits = charge_cache_hits
        self._queue: asyncio.Queue[Outcome] = asyncio.Queue(maxsize=max_pending)
        self._worker: asyncio.Task | None = None

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def record(self, outcome: Outcome) -> None:
        """Queue the outcome (waiting for room when the queue is full)."""
        if self._worker is None or self._worker.done():
            # Started on first use: the guard may be built before the event loop runs.
            self._worker = asyncio.create_task(self._drain_forever(), name="accounting")
        await self._queue.put(outcome)

    async def flush(self) -> None:
        """Wait until every outcome queued so far is charged and audited."""
        if self._worker is not None:
            await self._queue.join()

    async def close(self) -> None:
        """Drain the queue, then stop the worker."""
        await self.flush()
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None

    async def _drain_forever(self) -> None:
        while True:
            outcome = await self._queue.get()
            try:
                await self._account(outcome)
            finally:
                self._queue.task_done()

    async def _account(self, outcome: Outcome) -> None:
        free = outcome.cache in ("hit", "semantic") and not self.charge_cache_hits
        try:
            await self.tenancy.debit(outcome.tenant, 0 if free else outcome.prompt_tokens + outcome.completion_tokens)
        except RedisError:
            log.warning("could not charge tokens", extra={"tenant": outcome.tenant}, exc_info=True)
        try:
            await self.audit.append(outcome)
        except (RedisError, OSError):
            log.exception("could not append the audit record", extra={"request_id": outcome.request_id})
        except Exception:
            # The worker must outlive any one record (a bug here would stop all accounting).
            log.exception("accounting failed", extra={"request_id": outcome.request_id})
