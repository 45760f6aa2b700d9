"""Settings of the batch worker process (``python -m gateway.batch``), a third gateway edge: the
gateway's own settings (pipeline, tenancy, files, queue) plus how the worker runs lines."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from gateway.settings import GatewaySettings


class BatchSettings(GatewaySettings):
    service_name: str = "batch"
    # Services admit the batch worker's calls after the interactive calls waiting with them.
    request_priority: Literal["interactive", "batch"] = "batch"

    # Celery prefork pool processes; each has one event loop, one pipeline and its own
    # lines in flight.
    batch_worker_processes: int = Field(default=1, ge=1)
    # Lines in flight per process; while interactive requests are in flight anywhere on the
    # gateway, at most batch_line_concurrency_under_load, so batch work yields to them.
    batch_line_concurrency: int = Field(default=4, ge=1)
    batch_line_concurrency_under_load: int = Field(default=1, ge=1)
    # Requests per Celery task: small enough that a redelivered task repeats little, large
    # enough that the queue does not hold a message per line.
    batch_chunk_lines: int = Field(default=20, ge=1)
    # The longest one line may take, retries of timeouts and server errors included.
    batch_line_timeout_s: float = Field(default=120.0, gt=0)
    # Attempts at a line that timed out or met a server error before it is written to the
    # error file (an unavailable upstream or the rate limit defers the whole task instead).
    batch_line_attempts: int = Field(default=3, ge=1)
    # How long a task waits for Redis to come back (to store a result) before it gives its
    # message back to the queue.
    batch_redis_wait_s: float = Field(default=60.0, gt=0)
    # A batch line is admitted only while the tenant's rate-limit buckets hold more than this
    # share of their capacity, so the tenant's interactive requests always find room.
    batch_quota_reserve: float = Field(default=0.2, ge=0, lt=1)
    # A message taken by a worker that died is handed to another worker after this long
    # (kombu's visibility timeout for Redis); it must exceed the longest task, or a task still
    # running would be handed out a second time.
    batch_visibility_timeout_s: float = Field(default=3600.0, gt=0)
    # How often a worker looks for such messages.
    batch_restore_interval_s: float = Field(default=10.0, gt=0)
    # How often the worker checks its upstreams and reports itself ready.
    batch_ready_interval_s: float = Field(default=2.0, gt=0)

    @property
    def task_time_limit_s(self) -> float:
        """The most one task may run: its lines, one slot at a time under interactive load,
        and a wait for Redis; Celery kills a task that runs longer (and its message is
        redelivered)."""
        rounds = math.ceil(self.batch_chunk_lines / self.batch_line_concurrency_under_load)
        return rounds * self.batch_line_timeout_s + self.batch_redis_wait_s

    @model_validator(mode="after")
    def _visibility_fits_the_longest_task(self) -> BatchSettings:
        if self.batch_visibility_timeout_s <= self.task_time_limit_s:
            raise ValueError(
                f"LLMESH_BATCH_VISIBILITY_TIMEOUT_S ({self.batch_visibility_timeout_s:g}s) must exceed the longest "
                f"task ({self.task_time_limit_s:g}s: ceil(LLMESH_BATCH_CHUNK_LINES / "
                "LLMESH_BATCH_LINE_CONCURRENCY_UNDER_LOAD) x LLMESH_BATCH_LINE_TIMEOUT_S + LLMESH_BATCH_REDIS_WAIT_S)"
            )
        return self
