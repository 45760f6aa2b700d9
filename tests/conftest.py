"""Fixtures shared by every test tier; helpers live in tests/support/."""

import shutil

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

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
