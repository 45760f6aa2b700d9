"""The batch worker: a Celery worker whose prefork pool processes each keep one event loop, one
pipeline and one guard for their whole life, and run every request of a task through them.

The loop runs in a thread of its own, so the process's background work (yielding to interactive
load, reporting readiness, reloading experiments) goes on between tasks; a task hands its
coroutine to the loop and waits for it. The main process only consumes the queue, supervises the
pool and serves /metrics, /healthz and /readyz; it never opens a gRPC channel, so the pool
processes it forks (again, after one dies) start clean.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import astuple
from typing import Any, TypeVar

from celery import Celery, signals
from celery.exceptions import Reject, Retry
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from gateway.batch import celery_app, metrics
from gateway.batch.jsonl import Chunk
from gateway.batch.runner import READY_KEY, BatchRunner
from gateway.batch.settings import BatchSettings
from gateway.batch.storage import storage_for
from gateway.batch.store import BatchStore
from gateway.errors import UpstreamUnavailable
from gateway.guard import Guard
from gateway.pipeline import Pipeline
from mesh.redis_client import sync_redis
from mesh.telemetry import setup_tracing

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long a task whose store or broker is away waits before giving its message back.
_REQUEUE_PAUSE_S = 2.0


class WorkerProcess:
    """One pool process's event loop and what lives in it."""

    def __init__(self, settings: BatchSettings, node: str) -> None:
        self.settings = settings
        self.node = node
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="batch-loop", daemon=True)
        self.provider = setup_tracing(settings)
        self._runner: BatchRunner | None = None
        self._background: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.thread.start()
        self._runner = self.run(self._open())

    @property
    def runner(self) -> BatchRunner:
        if self._runner is None:
            raise RuntimeError("the batch worker process has not been started (WorkerProcess.start)")
        return self._runner

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    async def _open(self) -> BatchRunner:
        # Built inside the loop: aio channels and clients bind to the loop that creates them.
        pipeline = Pipeline(self.settings)
        guard = Guard(self.settings, pipeline, quota_reserve=self.settings.batch_quota_reserve)
        runner = BatchRunner(self.settings, guard, BatchStore(self.settings), storage_for(self.settings))
        self._background = [
            asyncio.create_task(runner.watch_load()),
            asyncio.create_task(runner.report_ready(self.node)),
        ]
        return runner

    async def _close(self) -> None:
        if self._runner is not None:
            self._runner.stopping = True
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._runner is not None:
            await self._runner.store.redis.hdel(READY_KEY + self.node, str(os.getpid()))
            await self._runner.store.close()
            await self._runner.guard.close()
            await self._runner.guard.pipeline.close()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self._close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.provider.shutdown()


class _ThisProcess:
    """The pool process's own WorkerProcess, made when Celery starts the process."""

    worker: WorkerProcess | None = None


@contextlib.contextmanager
def _durably(batch_id: str) -> Iterator[WorkerProcess]:
    """Runs a task's body so that its batch always ends up somewhere: Redis (store and broker)
    away for longer than a task waits gives the message back to the queue (if the broker cannot
    take it now either, it stays unacknowledged and the visibility timeout brings it back); any
    other failure fails the batch, visibly, rather than leaving it in progress forever."""
    worker = _ThisProcess.worker
    if worker is None:
        raise RuntimeError("no WorkerProcess in this pool process: worker_process_init has not run")
    try:
        yield worker
    except (Retry, Reject):
        raise
    except (UpstreamUnavailable, RedisError, OperationalError, ConnectionError) as error:
        log.warning("store or broker unavailable; the task goes back to the queue", extra={"error": str(error)})
        time.sleep(_REQUEUE_PAUSE_S)
        raise Reject(str(error), requeue=True) from error
    except Exception as error:
        log.exception("batch task failed", extra={"batch_id": batch_id})
        worker.run(worker.runner.fail(batch_id, "internal_error", f"The batch worker failed: {type(error).__name__}."))


def create_worker_app(settings: BatchSettings) -> Celery:
    """The Celery app with the batch tier's three tasks."""
    app = celery_app.create_celery(
        settings,
        {
            "visibility_timeout": settings.batch_visibility_timeout_s,
            "unacked_restore_interval": settings.batch_restore_interval_s,
            # Look on every sweep (kombu's default looks on one in ten).
            "unacked_restore_throttle": 1,
        },
    )
    app.conf.task_time_limit = settings.task_time_limit_s
    queue = settings.batch_queue

    @app.task(name=celery_app.START, bind=True)
    def start(task, batch_id: str) -> None:
        metrics.TASKS.labels("start", str(_redelivered(task)).lower()).inc()
        with _durably(batch_id) as worker:
            plan, first = worker.run(worker.runner.plan(batch_id))
            for index in range(first, len(plan)):
                app.send_task(celery_app.CHUNK, args=[batch_id, list(astuple(plan[index]))], queue=queue)
                worker.run(worker.runner.chunk_queued(batch_id, index))

    @app.task(name=celery_app.CHUNK, bind=True)
    def chunk(task, batch_id: str, chunk: list[int]) -> None:
        redelivered = _redelivered(task)
        metrics.TASKS.labels("chunk", str(redelivered).lower()).inc()
        with _durably(batch_id) as worker:
            outcome = worker.run(worker.runner.run_chunk(batch_id, Chunk(*chunk), task.request.retries, redelivered))
            if outcome.batch_done:
                app.send_task(celery_app.FINALIZE, args=[batch_id], queue=queue)
            if outcome.defer_s:
                # Kept below the visibility timeout: a message held back longer would be handed
                # out again while it waits.
                countdown = min(outcome.defer_s, settings.batch_visibility_timeout_s / 4)
                raise task.retry(countdown=countdown, max_retries=None)

    @app.task(name=celery_app.FINALIZE, bind=True)
    def finalize(task, batch_id: str) -> None:
        metrics.TASKS.labels("finalize", str(_redelivered(task)).lower()).inc()
        with _durably(batch_id) as worker:
            worker.run(worker.runner.finalize(batch_id))

    return app


def _redelivered(task) -> bool:
    return bool((task.request.delivery_info or {}).get("redelivered"))


class _Readiness:
    """The main process's /readyz: consuming the queue, Redis answering, and at least one pool
    process whose upstreams are ready (each reports itself in Redis, see BatchRunner.report_ready)."""

    def __init__(self, settings: BatchSettings, node: str) -> None:
        self.settings = settings
        self.node = node
        self.consuming = threading.Event()
        self.redis = sync_redis(settings)

    def __call__(self) -> bool:
        if not self.consuming.is_set():
            return False
        try:
            reports = self.redis.hgetall(READY_KEY + self.node)
        except RedisError:
            return False
        fresh_ms = 3 * self.settings.batch_ready_interval_s * 1000
        now_ms = time.time() * 1000
        return any(now_ms - int(stamp) < fresh_ms for stamp in reports.values())


def run(settings: BatchSettings) -> None:
    node = f"batch-{os.getpid()}@{socket.gethostname()}"
    app = create_worker_app(settings)
    readiness = _Readiness(settings, node)

    def start_process(**_: Any) -> None:
        _ThisProcess.worker = WorkerProcess(settings, node)
        _ThisProcess.worker.start()

    def stop_process(**_: Any) -> None:
        if _ThisProcess.worker is not None:
            _ThisProcess.worker.stop()

    signals.worker_process_init.connect(start_process, weak=False)
    signals.worker_process_shutdown.connect(stop_process, weak=False)
    signals.worker_ready.connect(lambda **_: readiness.consuming.set(), weak=False)
    signals.worker_shutting_down.connect(lambda **_: readiness.consuming.clear(), weak=False)
    if settings.metrics_port:
        host = settings.listen_addr.rpartition(":")[0] or "127.0.0.1"
        metrics.serve_http(host, settings.metrics_port, settings, settings.batch_queue, readiness)
    # Celery's warnings (running as root, say) in the one log format too.
    logging.captureWarnings(True)
    if settings.log_level.upper() != "DEBUG":
        # Two lines per task (received, succeeded) would be most of the log; failures still show.
        for name in ("celery.worker.strategy", "celery.app.trace"):
            logging.getLogger(name).setLevel(logging.WARNING)
    log.info("starting", extra={"node": node, "queue": settings.batch_queue, "metrics_port": settings.metrics_port})
    app.worker_main(
        [
            # No banner on stdout: the log is JSON lines only.
            "--quiet",
            "worker",
            "--pool=prefork",
            f"--concurrency={settings.batch_worker_processes}",
            f"--queues={settings.batch_queue}",
            f"--hostname={node}",
            f"--loglevel={settings.log_level}",
            # No gossip or syncing between workers, no event heartbeats: the queue is the only
            # coordination the batch tier needs.
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
