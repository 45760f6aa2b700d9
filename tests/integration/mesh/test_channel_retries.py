"""Retries with a budget (mesh.channel's service config): only UNAVAILABLE is retried, and
against an upstream that answers nothing else, upstream attempts per client request stay
at or below 1.2."""

import grpc
import pytest

from mesh.channel import build_channel
from mesh.server import create_server
from mesh.settings import MeshSettings

METHOD = "/llmesh.test.v1.Flaky/Call"
REQUESTS = 50


class _Upstream:
    """Answers every call with ``code``, counting the attempts that reached it."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self.code = code
        self.attempts = 0

    async def call(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.attempts += 1
        await context.abort(self.code, "down")


@pytest.fixture
async def serve():
    servers = []

    async def start(code: grpc.StatusCode) -> tuple[_Upstream, str]:
        upstream = _Upstream(code)
        server, port = create_server("127.0.0.1:0", MeshSettings())
        handler = grpc.unary_unary_rpc_method_handler(upstream.call)
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("llmesh.test.v1.Flaky", {"Call": handler})]
        )
        await server.start()
        servers.append(server)
        return upstream, f"127.0.0.1:{port}"

    yield start
    for server in servers:
        await server.stop(None)


async def _call_many(addr: str, settings: MeshSettings) -> list[grpc.StatusCode]:
    codes = []
    async with build_channel(addr, settings) as channel:
        call = channel.unary_unary(METHOD)
        for _ in range(REQUESTS):
            try:
                await call(b"", timeout=5)
            except grpc.aio.AioRpcError as error:
                codes.append(error.code())
    return codes


async def test_retries_against_a_down_upstream_stay_within_the_budget(serve):
    upstream, addr = await serve(grpc.StatusCode.UNAVAILABLE)
    codes = await _call_many(addr, MeshSettings(retry_max_attempts=3))
    assert codes == [grpc.StatusCode.UNAVAILABLE] * REQUESTS
    # Some retries were made (the policy is on), but few: the throttle stopped them.
    assert REQUESTS < upstream.attempts <= 1.2 * REQUESTS, upstream.attempts


async def test_other_failures_are_never_retried(serve):
    upstream, addr = await serve(grpc.StatusCode.INTERNAL)
    await _call_many(addr, MeshSettings(retry_max_attempts=3))
    assert upstream.attempts == REQUESTS
