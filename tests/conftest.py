"""Fixtures shared by every test tier; helpers live in tests/support/."""

import shutil

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mesh.catalog import default_models
from mesh.net import free_ports
from support.redis_server import RedisServer


@pytest.fixture(scope="session")
def spans() -> InMemorySpanExporter:
    """Every span finished in this test process; tests clear it before the call they check."""
    # The global provider can be set only once per process.
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A private redis-server on a free port, for tests of Redis-backed state."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def otlp_sink():
    """Where the session's tritonserver sends its OpenTelemetry spans."""
    from support.otlp_sink import OtlpSink

    sink = OtlpSink()
    yield sink
    sink.close()


@pytest.fixture(scope="session")
def triton(otlp_sink, tmp_path_factory):
    """The real tritonserver with the project's model repository (both vLLM engines), started
    once per test session: integration tests and the e2e stack share it, since each engine takes
    tens of seconds to start."""
    from services.inference.triton_server import TritonServer

    missing = [m.name for m in default_models() if not (m.resolved_dir() / "config.json").is_file()]
    if missing:
        pytest.fail(f"model directories missing for {', '.join(missing)}: run `make models`")
    http, grpc_port, metrics = free_ports(3)
    server = TritonServer(
        http_port=http,
        grpc_port=grpc_port,
        metrics_port=metrics,
        otlp_endpoint=otlp_sink.url,
        log_file=tmp_path_factory.mktemp("triton") / "tritonserver.log",
    )
    with server:
        print(f"tritonserver ready in {server.startup_s:.1f}s")
        yield server
