"""The Celery application of the batch tier: Redis as broker, one queue of its own, and the
settings that make a task survive its worker (late acknowledgement, redelivery of the tasks of a
worker process that died, a visibility timeout longer than any task).

The REST edge only sends tasks (by name); the worker registers them (gateway/batch/worker.py).
"""

from __future__ import annotations

from celery import Celery

from gateway.settings import GatewaySettings

START = "llmesh.batch.start"
CHUNK = "llmesh.batch.chunk"
FINALIZE = "llmesh.batch.finalize"


def create_celery(settings: GatewaySettings, transport_options: dict | None = None) -> Celery:
    app = Celery("llmesh-batch", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_default_queue=settings.batch_queue,
        task_serializer="json",
        accept_content=["json"],
        # Progress and results live in the batch's own records, not in a result backend.
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        # A task's message is acknowledged once the task has finished, so a worker that dies
        # midway leaves it to be delivered again: at once when a pool process dies
        # (reject_on_worker_lost), after the visibility timeout when the whole worker does.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # A task killed by its time limit is delivered again too, not dropped.
        task_acks_on_failure_or_timeout=False,
        # A worker process holds one message beyond the one it runs, no more: the queue, not
        # a busy worker's buffer, keeps the rest.
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_transport_options=transport_options or {},
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
    )
    return app
