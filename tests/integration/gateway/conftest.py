"""Fixtures of the gateway's integration tests: fake model services on a real gRPC server."""

import pytest

from mesh.server import start_service
from mesh.settings import MeshSettings
from support.fake_upstreams import FakeUpstreams


@pytest.fixture(scope="module")
def fake_upstreams():
    """The fakes behind the gateway; a test module overrides this fixture to fake otherwise."""
    return FakeUpstreams()


@pytest.fixture(scope="module")
async def upstreams(fake_upstreams):
    """(the fakes, their address): preprocess, router, inference and postprocess on one server."""
    running = await start_service(fake_upstreams, MeshSettings(), "127.0.0.1:0")
    yield fake_upstreams, f"127.0.0.1:{running.port}"
    await running.stop(None)
