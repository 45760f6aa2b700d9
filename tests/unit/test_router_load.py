"""Triton's metrics endpoint, read into per-model price multipliers."""

import pytest

from services.router.load import LoadMonitor, load_factor, parse
from services.router.settings import RouterSettings

METRICS = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{{model="llmesh-large",version="1"}} {large_requests}
nv_inference_request_success{{model="llmesh-small",version="1"}} 10
# HELP nv_inference_queue_duration_us Cumulative inference queuing duration in microseconds
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{{model="llmesh-large",version="1"}} {large_queue_us}
nv_inference_queue_duration_us{{model="llmesh-small",version="1"}} 500
# HELP nv_inference_pending_request_count Instantaneous number of pending requests
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{{model="llmesh-large",version="1"}} {large_pending}
nv_inference_pending_request_count{{model="llmesh-small",version="1"}} 0
"""


def text(large_requests=4, large_queue_us=1000, large_pending=0):
    return METRICS.format(large_requests=large_requests, large_queue_us=large_queue_us, large_pending=large_pending)


def test_parse_reads_queue_time_requests_and_pending_per_model():
    assert parse(text(large_pending=3))["llmesh-large"] == {"queue_us": 1000.0, "requests": 4.0, "pending": 3.0}
    assert parse(text())["llmesh-small"] == {"queue_us": 500.0, "requests": 10.0, "pending": 0.0}


def test_factors_come_from_queue_time_since_the_last_read_and_pending_now():
    monitor = LoadMonitor(RouterSettings(load_queue_ms=50.0, load_pending=8.0))
    monitor.update(parse(text()))
    # 10 more requests waited 500 ms in all (50 ms each): the price doubles; 4 pending add half.
    factors = monitor.update(parse(text(large_requests=14, large_queue_us=501_000, large_pending=4)))
    assert factors["llmesh-large"] == pytest.approx(1.0 + 1.0 + 0.5)
    assert factors["llmesh-small"] == pytest.approx(1.0)  # idle since the last read


def test_an_idle_model_costs_its_list_price():
    assert load_factor(0.0, 0.0, 50.0, 8.0) == 1.0
