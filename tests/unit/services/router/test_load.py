"""The engines' load on Triton's metrics endpoint, read into per-model price multipliers."""

import pytest

from services.router.load import LoadMonitor, load_factor, parse
from services.router.settings import RouterSettings

METRICS = """\
# HELP llmesh_engine_requests_running Requests the engine is generating for
# TYPE llmesh_engine_requests_running gauge
llmesh_engine_requests_running{{model="smollm2-135m-instruct"}} {running}
llmesh_engine_requests_running{{model="llmesh-small"}} 0
# HELP llmesh_engine_requests_waiting Requests queued in the engine
# TYPE llmesh_engine_requests_waiting gauge
llmesh_engine_requests_waiting{{model="smollm2-135m-instruct"}} {waiting}
llmesh_engine_requests_waiting{{model="llmesh-small"}} 0
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{{model="llmesh-small",version="1"}} 10
"""


def text(running=0, waiting=0):
    return METRICS.format(running=running, waiting=waiting)


def test_parse_reads_running_and_waiting_requests_per_model():
    assert parse(text(running=3, waiting=1))["smollm2-135m-instruct"] == {"running": 3.0, "waiting": 1.0}
    assert parse(text())["llmesh-small"] == {"running": 0.0, "waiting": 0.0}


def test_a_full_batch_doubles_the_price_and_each_queued_request_adds_to_it():
    monitor = LoadMonitor(RouterSettings(load_running=32.0, load_waiting=4.0))
    factors = monitor.update(parse(text(running=32, waiting=2)))
    assert factors["smollm2-135m-instruct"] == pytest.approx(1.0 + 1.0 + 0.5)
    assert factors["llmesh-small"] == pytest.approx(1.0)


def test_an_idle_model_costs_its_list_price():
    assert load_factor(0.0, 0.0, 32.0, 4.0) == 1.0
