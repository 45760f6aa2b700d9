"""What a batch worker process does, in its event loop: plan a batch into chunks, run a chunk's
requests through the guard and pipeline (as the REST edge would), assemble the output files.

Every step can run twice (a task redelivered after its worker died) without changing the
outcome: a request that already has a result is skipped, a result is written only if none is
there (gateway/batch/store.py), status changes are conditional, output files are rewritten whole
under fixed names.

A request meets one of three fates:
- it ran: its answer or its error object (4xx, or a server error that stayed after
  ``batch_line_attempts``) is its result;
- it is deferred: the tenant's rate limit is reached or an upstream is unavailable, so the whole
  task is tried again later and the request has no result yet;
- it never runs: the batch was cancelled or expired first, and its result says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from opentelemetry.trace import Status, StatusCode
from redis.exceptions import RedisError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from gateway import readiness
from gateway.batch import jsonl, metrics
from gateway.batch.settings import BatchSettings
from gateway.batch.storage import FileStorage
from gateway.batch.store import ERROR, OUTPUT, TERMINAL, BatchRecord, BatchStore, FileRecord
from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.guard import Guard
from gateway.load import interactive_in_flight
from gateway.openai_format import gateway_error_object
from gateway.tenancy import ApiKey, RateLimited
from llmesh.common.v1 import common_pb2
from mesh import semconv
from mesh.telemetry import tracer

log = logging.getLogger(__name__)
_tracer = tracer(__name__)

T = TypeVar("T")

READY_KEY = "llmesh:batch-ready:"  # + worker node name -> hash: pool process id -> unix ms
# Interactive load must be gone this long before batch lines take their full concurrency again.
_LOAD_COOLDOWN_S = 0.5
# The longest a task waits before it is tried again after an unavailable upstream.
_MAX_DEFER_S = 60.0


class Deferred(Exception):
    """The request cannot run now, through no fault of its own: try the task again later."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"deferred for {seconds:g}s")
        self.seconds = seconds


@dataclass(frozen=True)
class ChunkOutcome:
    # > 0: run the task again after this long (some requests were deferred).
    defer_s: float = 0.0
    # Every request of the batch has a result: the batch can be finalized.
    batch_done: bool = False


class LoadGate:
    """Requests in flight in this process: up to ``normal``, or ``under_load`` while
    interactive requests are in flight on the gateway."""

    def __init__(self, normal: int, under_load: int) -> None:
        self.normal = normal
        self.under_load = min(under_load, normal)
        self.limit = normal
        self.in_flight = 0
        self._changed = asyncio.Condition()

    async def set_busy(self, busy: bool) -> None:
        limit = self.under_load if busy else self.normal
        if limit != self.limit:
            async with self._changed:
                self.limit = limit
                self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight < self.limit)
            self.in_flight += 1
        try:
            yield
        finally:
            async with self._changed:
                self.in_flight -= 1
                self._changed.notify_all()


@dataclass
class _TaskState:
    """One chunk task's shared state across its requests."""

    retries: int
    defer_s: float = 0.0

    def defer(self, seconds: float) -> None:
        self.defer_s = max(self.defer_s, seconds)


@dataclass(frozen=True)
class _Result:
    value: str  # OUTPUT or ERROR, then the output line
    outcome: str  # completed | failed | expired | cancelled
    usage: common_pb2.Usage | None = None


def output_file_id(batch_id: str, kind: str) -> str:
    """The id of a batch's output or error file: the same however often it is finalized."""
    return "file-" + hashlib.sha256(f"{batch_id}:{kind}".encode()).hexdigest()[:24]


class BatchRunner:
    def __init__(self, settings: BatchSettings, guard: Guard, store: BatchStore, storage: FileStorage) -> None:
        self.settings = settings
        self.guard = guard
        self.store = store
        self.storage = storage
        self.gate = LoadGate(settings.batch_line_concurrency, settings.batch_line_concurrency_under_load)
        # Ends the background loops (with a cancellation, which redis-py may swallow when it
        # lands inside a Redis call: the flag stops them even then).
        self.stopping = False

    async def _patiently(self, call: Callable[[], Awaitable[T]]) -> T:
        """Runs a store call, waiting out a Redis restart (up to batch_redis_wait_s)."""
        async for attempt in AsyncRetrying(
            stop=stop_after_delay(self.settings.batch_redis_wait_s),
            wait=wait_exponential(multiplier=0.1, max=2.0),
            retry=retry_if_exception_type(UpstreamUnavailable),
            reraise=True,
        ):
            with attempt:
                return await call()
        raise AssertionError("unreachable")

    # -- background work of the process ----------------------------------------------------

    async def watch_load(self) -> None:
        """Yields to interactive traffic: fewer lines in flight while there is some."""
        interval_s = self.settings.interactive_load_interval_s
        busy_until = 0.0
        while not self.stopping:
            try:
                in_flight = await interactive_in_flight(self.store.redis, interval_s)
            except (RedisError, OSError):
                in_flight = 0
            now = time.monotonic()
            if in_flight:
                busy_until = now + _LOAD_COOLDOWN_S
            await self.gate.set_busy(now < busy_until)
            await asyncio.sleep(interval_s)

    async def report_ready(self, node: str) -> None:
        """Marks this process ready in Redis while its upstreams are (read by the main
        process's /readyz)."""
        pid = str(os.getpid())
        while not self.stopping:
            try:
                statuses = await readiness.check(self.settings, self.guard.pipeline.channels)
                if readiness.is_ready(statuses):
                    await self.store.redis.hset(READY_KEY + node, pid, str(int(time.time() * 1000)))
                else:
                    log.info("not ready", extra={"checks": statuses})
                    await self.store.redis.hdel(READY_KEY + node, pid)
            except (RedisError, OSError):
                log.debug("could not report readiness", exc_info=True)
            await asyncio.sleep(self.settings.batch_ready_interval_s)

    # -- planning --------------------------------------------------------------------------

    async def plan(self, batch_id: str) -> tuple[list[jsonl.Chunk], int]:
        """The batch's chunks and the first one not yet queued; moves it to in_progress."""
        batch = await self._patiently(lambda: self.store.any_batch(batch_id))
        if batch is None or batch.status in TERMINAL:
            return [], 0
        lines_per_chunk = int(batch.fields.get("chunk_lines") or self.settings.batch_chunk_lines)
        try:
            plan = await asyncio.to_thread(
                lambda: jsonl.plan_chunks(self.storage.stream(batch.input_file_id), lines_per_chunk)
            )
        except FileNotFoundError:
            await self._fail(batch, "input_file_missing", "The input file is missing from storage.")
            return [], 0
        if sum(chunk.count for chunk in plan) != batch.total:
            await self._fail(batch, "input_file_changed", "The input file no longer matches what was uploaded.")
            return [], 0
        if "chunks" not in batch.fields:
            # The plan is fixed at the first try, so a later try with other settings queues
            # the same chunks.
            await self._patiently(
                lambda: self.store.update(batch_id, chunk_lines=lines_per_chunk, chunks=len(plan), next_chunk=0)
            )
        await self._patiently(lambda: self.store.transition(batch_id, {"validating"}, "in_progress"))
        return plan, int(batch.fields.get("next_chunk", 0))

    async def chunk_queued(self, batch_id: str, index: int) -> None:
        await self._patiently(lambda: self.store.update(batch_id, next_chunk=index + 1))

    # -- running requests ------------------------------------------------------------------

    async def run_chunk(self, batch_id: str, chunk: jsonl.Chunk, retries: int, redelivered: bool) -> ChunkOutcome:
        with _tracer.start_as_current_span(semconv.SPAN_BATCH_CHUNK) as span:
            span.set_attributes(
                {
                    semconv.LLMESH_BATCH_ID: batch_id,
                    semconv.LLMESH_BATCH_FIRST_INDEX: chunk.first_index,
                    semconv.LLMESH_BATCH_REDELIVERED: redelivered,
                }
            )
            batch = await self._patiently(lambda: self.store.any_batch(batch_id))
            if batch is None or batch.status in TERMINAL:
                return ChunkOutcome()
            if redelivered:
                await self._patiently(lambda: self.store.increment(batch_id, "redelivered_tasks"))
            try:
                data = await asyncio.to_thread(self.storage.read, batch.input_file_id, chunk.start, chunk.end)
            except FileNotFoundError:
                await self._fail(batch, "input_file_missing", "The input file is missing from storage.")
                return ChunkOutcome()
            requests = list(jsonl.read_chunk(data, chunk, self.settings.models))
            pending = set(
                await self._patiently(lambda: self.store.without_result(batch_id, [r.index for r in requests]))
            )
            key_valid = not batch.key_id or await self.guard.tenancy.key_exists(batch.key_id)
            task = _TaskState(retries)
            await asyncio.gather(
                *(self._request(batch, request, task, key_valid) for request in requests if request.index in pending)
            )
            # The task is acknowledged once it returns: its lines are charged and audited by then.
            await self.guard.accounting.flush()
            done = await self._patiently(lambda: self.store.result_count(batch_id))
            return ChunkOutcome(task.defer_s, done >= batch.total)

    async def _request(
        self, batch: BatchRecord, request: jsonl.BatchRequest | jsonl.LineProblem, task: _TaskState, key_valid: bool
    ) -> None:
        async with self.gate.slot():
            if task.defer_s:
                # An earlier request of the task was deferred; this one waits for the next try.
                return
            started = time.perf_counter()
            with _tracer.start_as_current_span(semconv.SPAN_BATCH_LINE) as span:
                span.set_attributes(
                    {semconv.LLMESH_BATCH_ID: batch.id, semconv.LLMESH_BATCH_CUSTOM_ID: request.custom_id}
                )
                try:
                    result = await self._result(batch, request, task, key_valid)
                except Deferred as deferred:
                    task.defer(deferred.seconds)
                    return
                if result.outcome != "completed":
                    span.set_status(Status(StatusCode.ERROR, result.outcome))
            usage = result.usage or common_pb2.Usage()
            await self._patiently(
                lambda: self.store.record(
                    batch.id, request.index, result.value, result.outcome, usage.prompt_tokens, usage.completion_tokens
                )
            )
            metrics.LINES.labels(result.outcome).inc()
            metrics.LINE_DURATION.observe(time.perf_counter() - started)

    async def _result(
        self, batch: BatchRecord, request: jsonl.BatchRequest | jsonl.LineProblem, task: _TaskState, key_valid: bool
    ) -> _Result:
        # Read now, not when the task started: a cancel stops the requests not yet begun.
        current = await self._patiently(lambda: self.store.any_batch(batch.id))
        if current is not None and current.status == "cancelling":
            return _unexecuted(batch, request, "batch_cancelled", "The batch was cancelled before this request ran.")
        if time.time() > batch.expires_at:
            return _unexecuted(
                batch,
                request,
                "batch_expired",
                "This request could not be executed before the completion window expired.",
            )
        if isinstance(request, jsonl.LineProblem):
            body = _error_body(request.problem, "invalid_request_error", "invalid_file")
            return _failed(batch, request, 400, body)
        if not key_valid:
            body = _error_body(
                "The API key that created this batch has been revoked.", "authentication_error", "invalid_api_key"
            )
            return _failed(batch, request, 401, body)
        try:
            return await asyncio.wait_for(self._execute(batch, request, task), self.settings.batch_line_timeout_s)
        except TimeoutError:
            body = _error_body(
                f"The request did not finish within {self.settings.batch_line_timeout_s:g}s.", "server_error", "timeout"
            )
            return _failed(batch, request, 504, body)
        except (Deferred, asyncio.CancelledError):
            raise
        except Exception:
            # A fault of this worker, not of the request; the request is reported, not retried
            # forever.
            log.exception("batch request failed", extra={"batch_id": batch.id, "custom_id": request.custom_id})
            body = _error_body("The batch worker failed on this request.", "server_error", "internal")
            return _failed(batch, request, 500, body)

    async def _execute(self, batch: BatchRecord, request: jsonl.BatchRequest, task: _TaskState) -> _Result:
        key = ApiKey(batch.key_id, batch.tenant, "", 0)
        fmt = request.body.answer_format()
        failure: GatewayError | None = None
        for attempt in range(self.settings.batch_line_attempts):
            if attempt:
                await asyncio.sleep(min(0.1 * 2.0**attempt, 5.0))
            try:
                answer = await self.guard.chat(key, request.to_input())
            except RateLimited as error:
                raise Deferred(error.retry_after) from error
            except (UpstreamUnavailable, RedisError) as error:
                # An upstream or Redis (the guard's store) is away: nothing this request can fix.
                raise Deferred(min(_MAX_DEFER_S, 2.0**task.retries)) from error
            except (UpstreamTimeout, UpstreamError) as error:
                failure = error
                continue
            except GatewayError as error:
                return _failed(batch, request, error.http_status, gateway_error_object(error))
            return _Result(
                OUTPUT
                + jsonl.response_line(batch.id, request.index, request.custom_id, 200, answer.id, fmt.result(answer)),
                "completed",
                answer.usage,
            )
        if failure is None:
            raise RuntimeError("batch_line_attempts is below 1: the request was never tried")
        return _failed(batch, request, failure.http_status, gateway_error_object(failure))

    # -- finishing -------------------------------------------------------------------------

    async def finalize(self, batch_id: str) -> None:
        batch = await self._patiently(lambda: self.store.any_batch(batch_id))
        if batch is None:
            return
        if batch.status in TERMINAL:
            await self._release(batch)
            return
        if await self._patiently(lambda: self.store.result_count(batch_id)) < batch.total:
            return
        await self._patiently(lambda: self.store.transition(batch_id, {"in_progress"}, "finalizing"))
        output: list[bytes] = []
        errors: list[bytes] = []
        async for index, value in self.store.results(batch_id, batch.total):
            if value is None:
                raise RuntimeError(f"batch {batch_id}: request {index} has no result though every request was counted")
            (output if value[0] == OUTPUT else errors).append(value[1:].encode() + b"\n")
        files = {
            "output_file_id": await self._save(batch, "output", output),
            "error_file_id": await self._save(batch, "error", errors),
        }
        current = await self._patiently(lambda: self.store.any_batch(batch_id))
        if current is None:
            raise RuntimeError(f"batch {batch_id} disappeared while it was being finalized")
        if current.status == "cancelling":
            final = "cancelled"
        elif current.count("expired"):
            final = "expired"
        else:
            final = "completed"
        await self._patiently(lambda: self.store.transition(batch_id, {"finalizing", "cancelling"}, final, **files))
        log.info("batch finished", extra={"batch_id": batch_id, "status": final, "requests": batch.total})
        await self._release(batch)

    async def _save(self, batch: BatchRecord, kind: str, lines: list[bytes]) -> str:
        if not lines:
            return ""
        file_id = output_file_id(batch.id, kind)
        size = await asyncio.to_thread(self.storage.save, file_id, lines)
        record = FileRecord(
            id=file_id,
            tenant=batch.tenant,
            bytes=size,
            created_at=int(time.time()),
            filename=f"{batch.id}_{kind}.jsonl",
            purpose="batch_output",
        )
        await self._patiently(lambda: self.store.add_file(record))
        return file_id

    async def _release(self, batch: BatchRecord) -> None:
        await self._patiently(lambda: self.store.release_input(batch))
        await self._patiently(lambda: self.store.drop_results(batch.id))

    async def fail(self, batch_id: str, code: str, message: str) -> None:
        batch = await self._patiently(lambda: self.store.any_batch(batch_id))
        if batch is not None and batch.status not in TERMINAL:
            await self._fail(batch, code, message)

    async def _fail(self, batch: BatchRecord, code: str, message: str) -> None:
        errors = {"object": "list", "data": [{"code": code, "message": message, "param": None, "line": None}]}
        statuses = {"validating", "in_progress", "finalizing", "cancelling"}
        await self._patiently(lambda: self.store.transition(batch.id, statuses, "failed", errors=json.dumps(errors)))
        log.warning("batch failed", extra={"batch_id": batch.id, "code": code})
        await self._release(batch)


def _error_body(message: str, error_type: str, code: str) -> dict:
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


def _failed(batch: BatchRecord, request: jsonl.BatchRequest | jsonl.LineProblem, status: int, body: dict) -> _Result:
    line = jsonl.response_line(batch.id, request.index, request.custom_id, status, "", body)
    return _Result(ERROR + line, "failed")


def _unexecuted(
    batch: BatchRecord, request: jsonl.BatchRequest | jsonl.LineProblem, code: str, message: str
) -> _Result:
    outcome = "cancelled" if code == "batch_cancelled" else "expired"
    return _Result(ERROR + jsonl.unexecuted_line(batch.id, request.index, request.custom_id, code, message), outcome)
