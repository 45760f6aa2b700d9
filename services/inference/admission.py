"""Per-model admission: each model's engine calls are bounded on their own, so that one model's
overload neither queues without end nor takes the slots of the process's other models.

A model's full queue is not the model's failure: a request refused here (or by Triton's own
``max_queue_size``) goes to the next model of its chain, and is answered RESOURCE_EXHAUSTED
(``OVERLOADED``, as mesh.shedding refuses a whole process) when no model had room; neither
counts against a circuit breaker, and RESOURCE_EXHAUSTED is no failure for replica ejection.
Waiting interactive calls are admitted before waiting batch calls (mesh.shedding.Admission).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable

from prometheus_client import Counter, Gauge

from mesh import semconv
from mesh.shedding import INTERACTIVE, Admission, Overloaded, current_priority

# Why a model refused a request: its admission queue here was full, or Triton's was.
QUEUE_FULL = "queue_full"
TRITON_QUEUE_FULL = "triton_queue_full"

REFUSALS = Counter(
    semconv.METRIC_INFERENCE_MODEL_REFUSALS,
    "Engine calls a model refused for capacity (sent on along the chain, or answered OVERLOADED)",
    ["model", "reason", "priority"],
)
IN_FLIGHT = Gauge(semconv.METRIC_INFERENCE_MODEL_IN_FLIGHT, "Engine calls of each model holding a slot", ["model"])
QUEUED = Gauge(semconv.METRIC_INFERENCE_MODEL_QUEUED, "Engine calls of each model waiting for a slot", ["model"])


class ModelFull(Exception):
    """The model has no slot and no room in its queue (or Triton's queue refused the call).

    Not a mesh.shedding.Overloaded: that one, escaping a handler, is the process's refusal."""

    def __init__(self, model: str, reason: str) -> None:
        super().__init__(f"{model} is at capacity ({reason})")
        self.model = model
        self.reason = reason


class _ModelAdmission(Admission):
    """One model's admission, counting its refusals under the model's name instead of the process's."""

    def __init__(self, model: str, max_concurrent: int, max_queued: int) -> None:
        super().__init__(max_concurrent, max_queued)
        self.model = model

    def shed(self, priority: str) -> None:
        REFUSALS.labels(self.model, QUEUE_FULL, priority).inc()

    def queue_changed(self, priority: str) -> None:
        # The model's gauges read the admission when scraped.
        pass


class ModelAdmissions:
    """An admission per model, limits from the inference settings (``model_limit``)."""

    def __init__(self, limits: Iterable[tuple[str, int, int]]) -> None:
        self.admissions = {
            model: _ModelAdmission(model, max_concurrent, max_queued) for model, max_concurrent, max_queued in limits
        }
        for model, admission in self.admissions.items():
            IN_FLIGHT.labels(model).set_function(_reader(admission, "in_flight"))
            QUEUED.labels(model).set_function(_reader(admission, "queued"))

    def limits(self, model: str) -> tuple[int, int]:
        admission = self.admissions[model]
        return admission.max_concurrent, admission.max_queued

    @contextlib.asynccontextmanager
    async def slot(self, model: str) -> AsyncIterator[None]:
        """Hold one of ``model``'s slots for the block (a stream: to its end), at the priority
        of the request being served; raises ModelFull when there is none and no room to wait."""
        priority = current_priority() or INTERACTIVE
        try:
            await self.admissions[model].acquire(priority)
        except Overloaded:
            raise ModelFull(model, QUEUE_FULL) from None
        try:
            yield
        finally:
            self.admissions[model].release()


def triton_refused(model: str) -> ModelFull:
    """Triton's queue for ``model`` (its ``max_queue_size``) refused the call."""
    REFUSALS.labels(model, TRITON_QUEUE_FULL, current_priority() or INTERACTIVE).inc()
    return ModelFull(model, TRITON_QUEUE_FULL)


def _reader(admission: Admission, attribute: str) -> Callable[[], float]:
    return lambda: float(getattr(admission, attribute))
