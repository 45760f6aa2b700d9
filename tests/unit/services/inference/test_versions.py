"""Traffic splits between model versions, the lifecycle's order of steps, and version failover in
the inference service; Redis and Triton are faked (the integration test uses the real ones)."""

import asyncio
from collections import Counter

import grpc
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from llmesh.common.v1 import common_pb2
from llmesh.inference.v1 import inference_pb2
from services.inference.lifecycle import LifecycleError, ModelLifecycle
from services.inference.service import InferenceService
from services.inference.settings import InferenceSettings
from services.inference.triton_client import TritonError
from services.inference.versions import Split, SplitError, TrafficSplits, split_key
from support.fake_triton import FakeTriton, answer

SMALL = "llmesh-small"


class FakeRedis:
    def __init__(self):
        self.data = {}
        self.down = False

    def _check(self):
        if self.down:
            raise RedisConnectionError("redis is away")

    async def get(self, key):
        self._check()
        return self.data.get(key)

    async def mget(self, keys):
        self._check()
        return [self.data.get(key) for key in keys]

    async def set(self, key, value):
        self._check()
        self.data[key] = value.encode()

    async def aclose(self):
        pass


def splits(redis=None, draw=0.0):
    return TrafficSplits(redis or FakeRedis(), [SMALL], refresh_s=0.01, draw=lambda: draw)


# -- Split


def test_a_split_must_add_up_to_100_percent():
    with pytest.raises(SplitError, match="add up to 100"):
        Split.of({1: 50, 2: 40}, 1)
    with pytest.raises(SplitError, match=r"within 0\.\.100"):
        Split.of({1: 150, 2: -50}, 1)
    with pytest.raises(SplitError, match="positive"):
        Split.of({0: 100}, 1)


def test_versions_are_picked_in_proportion_to_their_percent():
    split = Split.of({1: 90, 2: 10}, 1)
    picks = Counter(split.pick(i / 1000) for i in range(1000))
    assert picks == {1: 900, 2: 100}


def test_a_version_with_no_traffic_is_never_picked_but_the_stable_one_is_tried_last():
    split = Split.of({1: 0, 2: 100}, 1)
    assert split.percent == {2: 100}
    assert {split.pick(i / 100) for i in range(100)} == {2}
    assert split.order(0.5) == [2, 1]


def test_a_rollback_sends_everything_to_the_stable_version():
    split = Split.of({1: 50, 2: 50}, 1).shifted({2: 100})
    assert split.rolled_back() == Split({1: 100}, 1)


def test_a_split_survives_its_round_trip_through_redis_text():
    split = Split.of({1: 30, 2: 70}, 1)
    assert Split.parse(split.dumps()) == split


# -- TrafficSplits


async def test_a_replica_applies_what_another_wrote_at_its_next_read():
    redis = FakeRedis()
    writer, reader = splits(redis), splits(redis, draw=0.99)
    assert reader.versions(SMALL) == [None]  # no split: Triton's own choice
    await writer.write(SMALL, Split.of({1: 50, 2: 50}, 1))
    assert writer.versions(SMALL)[0] == 1  # the writer applies it at once
    await reader.refresh()
    assert reader.versions(SMALL) == [2, 1, None]


async def test_the_last_split_read_stays_while_redis_is_away():
    redis = FakeRedis()
    replica = splits(redis)
    redis.data[split_key(SMALL)] = Split.of({2: 100}, 1).dumps().encode()
    await replica.refresh()
    redis.down = True
    await replica.refresh()
    assert replica.versions(SMALL) == [2, 1, None]


# -- ModelLifecycle


class LifecycleTriton:
    """Triton's repository as far as the lifecycle sees it; records each load's version policy."""

    def __init__(self, states):
        self.states = states
        self.policies = []
        self.fail_load = False

    async def model_versions(self, name):
        return dict(self.states)

    async def model_config(self, name):
        return {"name": name, "parameters": {}}

    async def load_model(self, name, config, timeout_s):
        if self.fail_load:
            raise TritonError("failed to load")
        versions = config["version_policy"]["specific"]["versions"]
        self.policies.append((versions, dict(config["parameters"])))
        self.states = {v: ("READY", "") for v in versions} | {
            v: ("UNAVAILABLE", "unloaded") for v in self.states if v not in versions
        }


def lifecycle(triton, replica=None, in_flight=None):
    return ModelLifecycle(
        triton, replica or splits(), in_flight or Counter(), load_timeout_s=5, drain_timeout_s=5, poll_s=0.01
    )


async def test_loading_a_version_pins_traffic_to_the_serving_one_first():
    triton = LifecycleTriton({1: ("READY", "")})
    replica = splits()
    await lifecycle(triton, replica).load(SMALL, 2, model_dir="/weights/v2")
    assert triton.policies == [([1, 2], {"model_dir.v2": {"string_value": "/weights/v2"}})]
    assert await replica.read(SMALL) == Split({1: 100}, 1)


async def test_a_version_not_ready_on_triton_gets_no_traffic():
    triton = LifecycleTriton({1: ("READY", ""), 2: ("LOADING", "")})
    with pytest.raises(LifecycleError) as raised:
        await lifecycle(triton).shift(SMALL, {1: 90, 2: 10})
    assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION and raised.value.reason == "NOT_READY"


async def test_a_rollback_moves_traffic_before_it_unloads_and_waits_for_requests_in_flight():
    triton = LifecycleTriton({1: ("READY", ""), 2: ("READY", "")})
    replica = splits()
    await replica.write(SMALL, Split.of({2: 100}, 1))
    in_flight = Counter({(SMALL, 2): 1})
    changes = lifecycle(triton, replica, in_flight)

    rolling = asyncio.create_task(changes.roll_back(SMALL))
    await asyncio.sleep(0.2)
    assert replica.versions(SMALL) == [1, None]  # traffic moved at once
    assert triton.policies == []  # but version 2 still has a request in flight
    in_flight[(SMALL, 2)] = 0
    traffic_s, seconds, unloaded = await rolling
    assert unloaded == [2] and triton.policies == [([1], {})]
    assert triton.states[2] == ("UNAVAILABLE", "unloaded")
    assert traffic_s <= seconds


async def test_a_version_with_traffic_or_the_last_one_is_not_unloaded():
    triton = LifecycleTriton({1: ("READY", ""), 2: ("READY", "")})
    replica = splits()
    await replica.write(SMALL, Split.of({1: 50, 2: 50}, 1))
    with pytest.raises(LifecycleError, match="still gets traffic"):
        await lifecycle(triton, replica).unload(SMALL, 2)
    with pytest.raises(LifecycleError, match="only one"):
        await lifecycle(LifecycleTriton({1: ("READY", "")}), replica).unload(SMALL, 1)


async def test_unloading_the_old_stable_version_makes_the_new_one_stable():
    triton = LifecycleTriton({1: ("READY", ""), 2: ("READY", "")})
    replica = splits()
    await replica.write(SMALL, Split.of({2: 100}, 1))
    await lifecycle(triton, replica).unload(SMALL, 1)
    assert await replica.read(SMALL) == Split({2: 100}, 2)
    assert triton.policies == [([2], {})]


async def test_lifecycle_changes_need_redis():
    redis = FakeRedis()
    redis.down = True
    with pytest.raises(LifecycleError) as raised:
        await lifecycle(LifecycleTriton({1: ("READY", "")}), splits(redis)).load(SMALL, 2)
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE and raised.value.reason == "REDIS_UNAVAILABLE"


# -- the service's version choice and failover


def generate_request():
    return inference_pb2.GenerateRequest(
        model=SMALL,
        prompts=[common_pb2.ModelPrompt(model=SMALL, token_ids=[1, 2, 3])],
        sampling=common_pb2.SamplingParams(max_tokens=4),
    )


async def test_requests_go_to_the_picked_version_and_fail_over_to_another_before_their_first_chunk():
    triton = FakeTriton({(SMALL, 2): [TritonError("version 2 is not at ready state")], (SMALL, 1): answer(7)})
    replica = splits(draw=0.99)
    await replica.write(SMALL, Split.of({1: 10, 2: 90}, 1))
    service = InferenceService(InferenceSettings(embedding_models=[]), triton, splits=replica)
    response = await service.Generate(generate_request(), None)
    assert triton.versions == [2, 1]
    assert list(response.choices[0].token_ids) == [7]
    assert service.breakers[SMALL].state.value == "closed"
    assert service.in_flight[(SMALL, 1)] == service.in_flight[(SMALL, 2)] == 0


async def test_a_split_naming_versions_triton_no_longer_has_falls_back_to_tritons_choice():
    missing = TritonError("version 2 is not at ready state")
    triton = FakeTriton({(SMALL, 2): [missing], (SMALL, None): answer(9)})
    replica = splits()
    await replica.write(SMALL, Split.of({2: 100}, 2))
    service = InferenceService(InferenceSettings(embedding_models=[]), triton, splits=replica)
    response = await service.Generate(generate_request(), None)
    assert triton.versions == [2, None]
    assert list(response.choices[0].token_ids) == [9]
