"""Mutual TLS from mesh settings: create_server requires a client certificate from the mesh
CA, build_channel presents one; strangers are refused."""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.channel import build_channel
from mesh.server import Health, create_server
from mesh.settings import MeshSettings
from tools.certs import generate, tls_env


def tls_settings(directory, service, monkeypatch) -> MeshSettings:
    for name, value in tls_env(directory, service).items():
        monkeypatch.setenv(name, value)
    return MeshSettings()


async def check(channel: grpc.aio.Channel) -> int:
    response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return response.status


@pytest.fixture
async def server(tmp_path, monkeypatch):
    generate(tmp_path / "mesh", services=["preprocess", "gateway"])
    settings = tls_settings(tmp_path / "mesh", "preprocess", monkeypatch)
    server, port = create_server("127.0.0.1:0", settings)
    health = Health(server, [])
    await health.set(True)
    await server.start()
    yield port
    await server.stop(None)


async def test_a_mesh_client_is_served(server, tmp_path, monkeypatch):
    settings = tls_settings(tmp_path / "mesh", "gateway", monkeypatch)
    async with build_channel(f"127.0.0.1:{server}", settings) as channel:
        assert await check(channel) == health_pb2.HealthCheckResponse.SERVING
    # The certificates name localhost too, and a target name override reaches a service by
    # an address its certificate does not name.
    override = settings.model_copy(update={"tls_server_name": "preprocess"})
    async with build_channel(f"localhost:{server}", override) as channel:
        assert await check(channel) == health_pb2.HealthCheckResponse.SERVING


async def test_strangers_are_refused(server, tmp_path, monkeypatch):
    generate(tmp_path / "other", services=["gateway"])
    ca = (tmp_path / "mesh" / "ca.pem").read_bytes()
    other = tmp_path / "other"
    for credentials in (
        None,
        grpc.ssl_channel_credentials(ca),
        grpc.ssl_channel_credentials(
            ca, (other / "gateway-key.pem").read_bytes(), (other / "gateway.pem").read_bytes()
        ),
    ):
        target = f"127.0.0.1:{server}"
        channel = grpc.aio.secure_channel(target, credentials) if credentials else grpc.aio.insecure_channel(target)
        async with channel:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await check(channel)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_missing_files_fail_at_start(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMESH_TLS_ENABLED", "true")
    with pytest.raises(ValueError, match="LLMESH_TLS_CA_FILE"):
        MeshSettings()
