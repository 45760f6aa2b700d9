"""The batch worker's Prometheus metrics and its HTTP endpoint (``/metrics``, ``/healthz``,
``/readyz`` on LLMESH_METRICS_PORT).

Lines are run in Celery's pool processes, so the counters use prometheus_client's multiprocess
mode (PROMETHEUS_MULTIPROC_DIR, set by ``python -m gateway.batch`` before anything imports
prometheus_client); the worker's main process serves the sum, and adds what it measures itself:
the queue's length (from Redis) and lines per second over the last half minute.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric

from mesh import semconv
from mesh.redis_client import sync_redis
from mesh.settings import MeshSettings

log = logging.getLogger(__name__)

LINES = Counter(semconv.METRIC_BATCH_LINES, "Batch requests finished, by outcome", ["outcome"])
LINE_DURATION = Histogram(
    semconv.METRIC_BATCH_LINE_DURATION,
    "Time to run one batch request, retries included",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
TASKS = Counter(semconv.METRIC_BATCH_TASKS, "Batch tasks run, by kind and whether redelivered", ["task", "redelivered"])

_RATE_WINDOW_S = 30.0


class BatchCollector:
    """What the main process adds at each scrape: queue length and the recent line rate."""

    def __init__(self, settings: MeshSettings, queue: str, registry: CollectorRegistry) -> None:
        self.redis = sync_redis(settings)
        self.queue = queue
        self._lines = multiprocess.MultiProcessCollector(None)
        self._samples: collections.deque[tuple[float, float]] = collections.deque()
        self._lock = threading.Lock()
        registry.register(self)

    def lines_done(self) -> float:
        return sum(
            sample.value
            for metric in self._lines.collect()
            if metric.name == semconv.METRIC_BATCH_LINES.removesuffix("_total")
            for sample in metric.samples
            if sample.name == semconv.METRIC_BATCH_LINES
        )

    def lines_per_second(self) -> float:
        now, done = time.monotonic(), self.lines_done()
        with self._lock:
            self._samples.append((now, done))
            while self._samples and self._samples[0][0] < now - _RATE_WINDOW_S:
                self._samples.popleft()
            first_at, first_done = self._samples[0]
        return (done - first_done) / (now - first_at) if now > first_at else 0.0

    def collect(self) -> Iterator[Metric]:
        queue = GaugeMetricFamily(semconv.METRIC_BATCH_QUEUE_LENGTH, "Batch tasks waiting in the queue")
        try:
            queue.add_metric([], self.redis.llen(self.queue))
        except redis.RedisError:
            log.debug("queue length unavailable", exc_info=True)
        yield queue
        yield GaugeMetricFamily(
            semconv.METRIC_BATCH_LINES_PER_SECOND,
            f"Batch requests finished per second over the last {_RATE_WINDOW_S:g}s, all pool processes",
            value=self.lines_per_second(),
        )

    def sample_forever(self, interval_s: float = 1.0) -> None:
        """Keeps the rate window filled between scrapes."""
        while True:
            self.lines_per_second()
            time.sleep(interval_s)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:
        pass


def serve_http(host: str, port: int, settings: MeshSettings, queue: str, ready: Callable[[], bool]) -> WSGIServer:
    """Starts the endpoint in background threads; ``ready`` answers /readyz."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    collector = BatchCollector(settings, queue, registry)
    metrics_app = make_wsgi_app(registry)

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path in ("/healthz", "/readyz"):
            ok = path == "/healthz" or ready()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "application/json")])
            return [b'{"status": "ok"}' if ok else b'{"status": "not ready"}']
        return metrics_app(environ, start_response)

    server = make_server(host, port, app, _ThreadingServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="batch-http", daemon=True).start()
    threading.Thread(target=collector.sample_forever, name="batch-rate", daemon=True).start()
    return server
