"""Fixtures of the gateway's integration tests: fake model services on a real gRPC server,
and the same hosted in the test's process and called in process (mesh.local, co-location)."""

import pytest

from mesh.local import HostedService
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


@pytest.fixture(scope="module", params=["over gRPC", "in process"])
async def either_upstreams(request, fake_upstreams):
    """``upstreams`` served over gRPC, then hosted in this process: a gateway built on their
    address calls them in process, as `llmesh up --colocate` does, and must answer the same."""
    if request.param == "over gRPC":
        running = await start_service(fake_upstreams, MeshSettings(), "127.0.0.1:0")
        yield fake_upstreams, f"127.0.0.1:{running.port}"
        await running.stop(None)
        return
    hosted = await HostedService.start(fake_upstreams, MeshSettings(), "127.0.0.1:0")
    yield fake_upstreams, hosted.addr
    await hosted.drain(0)
    await hosted.close()
