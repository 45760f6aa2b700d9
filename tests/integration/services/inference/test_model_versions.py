"""Model lifecycle against the real Triton (explicit model control) and a real redis-server:
version 2 of llmesh-small loaded beside version 1, traffic shifted to it, rolled back, all while
requests keep coming, none failing.

Its own Triton with llmesh-small only (two engines at most, about 5 GB), not the session's with
every model: a version is loaded and unloaded here, which other tests must not see."""

import asyncio

import grpc
import pytest
import tritonclient.grpc as triton_grpc

from llmesh.common.v1 import common_pb2
from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from mesh.channel import build_channel
from mesh.errors import error_info
from mesh.net import free_ports
from mesh.redis_client import sync_redis
from mesh.server import start_service
from services.inference.service import InferenceService
from services.inference.settings import InferenceSettings
from services.inference.triton_server import TritonServer
from services.inference.versions import split_key

SMALL = "llmesh-small"


def _generate() -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        model=SMALL,
        prompts=[common_pb2.ModelPrompt(model=SMALL, token_ids=[5, 6, 7, 8])],
        sampling=common_pb2.SamplingParams(max_tokens=8),
    )


def _answered(triton, version: int) -> int:
    """Requests Triton's version ``version`` of llmesh-small has answered (its own statistics)."""
    client = triton_grpc.InferenceServerClient(triton.grpc_url)
    try:
        stats = client.get_inference_statistics(SMALL, str(version), as_json=True)
    finally:
        client.close()
    return int(stats["model_stats"][0]["inference_stats"]["success"].get("count", 0))


def _states(reply: inference_pb2.ModelVersions) -> dict[int, tuple[str, int]]:
    return {v.version: (v.state, v.percent) for v in reply.versions}


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    http, grpc_port, metrics = free_ports(3)
    log_file = tmp_path_factory.mktemp("triton-versions") / "tritonserver.log"
    with TritonServer(
        http_port=http, grpc_port=grpc_port, metrics_port=metrics, models=[SMALL], log_file=log_file
    ) as t:
        yield t


@pytest.fixture
async def inference(triton, redis_url):
    settings = InferenceSettings(
        triton_grpc_addr=triton.grpc_url, redis_url=redis_url, default_deadline_s=60, model_split_refresh_s=0.2
    )
    # The session's Redis: another test may have left a split of this model in it.
    sync_redis(settings).delete(split_key(SMALL))
    service = InferenceService(settings)
    running = await start_service(service, settings, "127.0.0.1:0")
    async with build_channel(f"127.0.0.1:{running.port}", settings) as channel:
        yield inference_pb2_grpc.InferenceServiceStub(channel)
    await running.stop(None)
    await service.close()
    sync_redis(settings).delete(split_key(SMALL))


async def _requests(stub, count: int) -> list[grpc.StatusCode]:
    codes = []
    for _ in range(count):
        try:
            await stub.Generate(_generate(), timeout=30)
            codes.append(grpc.StatusCode.OK)
        except grpc.aio.AioRpcError as error:
            codes.append(error.code())
    return codes


async def test_load_shift_and_roll_back_under_load_fail_no_request(triton, inference):
    listed = await inference.ListModelVersions(inference_pb2.ListModelVersionsRequest(model=SMALL))
    assert _states(listed.models[0]) == {1: ("READY", 0)} and not listed.models[0].split_set

    stop = asyncio.Event()
    codes: list[grpc.StatusCode] = []

    async def client() -> None:
        while not stop.is_set():
            codes.extend(await _requests(inference, 1))

    clients = [asyncio.create_task(client()) for _ in range(2)]
    try:
        loaded = await inference.LoadModelVersion(
            inference_pb2.LoadModelVersionRequest(model=SMALL, version=2), timeout=300
        )
        assert _states(loaded.model) == {1: ("READY", 100), 2: ("READY", 0)}
        assert [v.version for v in loaded.model.versions if v.stable] == [1]

        # Ready, but no traffic until a split gives it some.
        before = _answered(triton, 2)
        await asyncio.sleep(1.0)
        assert _answered(triton, 2) == before

        await inference.SetTrafficSplit(inference_pb2.SetTrafficSplitRequest(model=SMALL, percent={1: 50, 2: 50}))
        v1, v2 = _answered(triton, 1), _answered(triton, 2)
        await _requests(inference, 30)
        assert _answered(triton, 1) > v1 and _answered(triton, 2) > v2

        await inference.SetTrafficSplit(inference_pb2.SetTrafficSplitRequest(model=SMALL, percent={2: 100}))
        v1 = _answered(triton, 1)
        await _requests(inference, 10)
        assert _answered(triton, 1) == v1

        rolled = await inference.RollBack(inference_pb2.RollBackRequest(model=SMALL), timeout=120)
        assert list(rolled.unloaded) == [2]
        assert _states(rolled.model)[1] == ("READY", 100)
        assert _states(rolled.model)[2][0] == "UNAVAILABLE"
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(*clients)
    assert codes and set(codes) == {grpc.StatusCode.OK}, f"{len(codes)} requests: {codes.count(grpc.StatusCode.OK)} ok"


async def test_a_version_that_is_not_ready_gets_no_traffic_and_a_failed_load_leaves_the_model_serving(inference):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await inference.SetTrafficSplit(inference_pb2.SetTrafficSplitRequest(model=SMALL, percent={1: 90, 2: 10}))
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(raised.value).reason == "NOT_READY"

    # There is no 7/ in the model's repository directory.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await inference.LoadModelVersion(inference_pb2.LoadModelVersionRequest(model=SMALL, version=7), timeout=120)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(raised.value).reason == "LOAD_FAILED"
    assert await _requests(inference, 3) == [grpc.StatusCode.OK] * 3
