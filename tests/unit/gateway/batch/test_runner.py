"""What the batch runner makes of a request's fate (the guard and store are faked here; the
integration tests run the real ones): answered, failed, deferred, never run."""

import asyncio
import json
import time

import pytest

from gateway.batch import jsonl
from gateway.batch.runner import BatchRunner, Deferred, LoadGate, _TaskState
from gateway.batch.settings import BatchSettings
from gateway.batch.store import ERROR, OUTPUT, BatchRecord
from gateway.errors import InvalidRequest, UpstreamError, UpstreamUnavailable
from gateway.records import ChatResult, ChoiceResult
from gateway.tenancy import RateLimited
from llmesh.common.v1 import common_pb2
from mesh.catalog import default_models


class FakeGuard:
    def __init__(self, *outcomes):
        self.outcomes = list(outcomes)
        self.calls = 0

    async def chat(self, key, request):
        self.calls += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


class FakeStore:
    def __init__(self, status="in_progress"):
        self.status = status

    async def any_batch(self, batch_id):
        return BatchRecord({**BATCH.fields, "status": self.status})


BATCH = BatchRecord(
    {
        "id": "batch_1",
        "tenant": "acme",
        "key_id": "k1",
        "status": "in_progress",
        "input_file_id": "file-1",
        "endpoint": "/v1/chat/completions",
        "expires_at": str(int(time.time()) + 3600),
        "total": "1",
    }
)
ANSWER = ChatResult(
    id="chatcmpl-1",
    created=1,
    model="llmesh-small",
    choices=[ChoiceResult(index=0, text="hello", finish_reason=common_pb2.FINISH_REASON_STOP)],
    usage=common_pb2.Usage(prompt_tokens=3, completion_tokens=2),
    route_reason="",
)


def request():
    body = {"messages": [{"role": "user", "content": "hi"}]}
    raw = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body}).encode()
    [chunk] = jsonl.plan_chunks([raw], 10)
    [parsed] = jsonl.read_chunk(raw, chunk, default_models())
    return parsed


def runner(guard, store=None, **settings):
    return BatchRunner(BatchSettings(batch_line_timeout_s=5, **settings), guard, store or FakeStore(), storage=None)


def parse(result):
    return result.value[0], json.loads(result.value[1:])


async def test_an_answer_goes_to_the_output_file():
    result = await runner(FakeGuard(ANSWER))._result(BATCH, request(), _TaskState(0), key_valid=True)
    kind, line = parse(result)
    assert (kind, result.outcome) == (OUTPUT, "completed") and result.usage.completion_tokens == 2
    assert (
        line["response"]["status_code"] == 200
        and line["response"]["body"]["choices"][0]["message"]["content"] == "hello"
    )


async def test_a_bad_request_fails_at_once_and_a_server_error_after_its_attempts():
    guard = FakeGuard(InvalidRequest("no", param="x"))
    result = await runner(guard)._result(BATCH, request(), _TaskState(0), key_valid=True)
    assert parse(result)[1]["response"]["status_code"] == 400 and guard.calls == 1
    guard = FakeGuard(*[UpstreamError("boom")] * 3)
    result = await runner(guard, batch_line_attempts=3)._result(BATCH, request(), _TaskState(0), key_valid=True)
    kind, line = parse(result)
    assert (kind, result.outcome, guard.calls) == (ERROR, "failed", 3)
    assert line["response"]["body"]["error"]["type"] == "server_error"
    guard = FakeGuard(UpstreamError("boom"), ANSWER)
    assert (await runner(guard)._result(BATCH, request(), _TaskState(0), key_valid=True)).outcome == "completed"


@pytest.mark.parametrize(
    ("error", "seconds"),
    [(RateLimited("slow down", retry_after_s=7), 7), (UpstreamUnavailable("away"), 4)],
)
async def test_quota_and_unavailable_upstreams_defer_the_task(error, seconds):
    with pytest.raises(Deferred) as raised:
        await runner(FakeGuard(error))._result(BATCH, request(), _TaskState(retries=2), key_valid=True)
    assert raised.value.seconds == seconds


async def test_cancelled_expired_and_revoked_requests_never_run():
    guard = FakeGuard()
    cancelled = await runner(guard, FakeStore("cancelling"))._result(BATCH, request(), _TaskState(0), key_valid=True)
    assert cancelled.outcome == "cancelled" and parse(cancelled)[1]["error"]["code"] == "batch_cancelled"
    expired_batch = BatchRecord({**BATCH.fields, "expires_at": str(int(time.time()) - 1)})
    expired = await runner(guard)._result(expired_batch, request(), _TaskState(0), key_valid=True)
    assert expired.outcome == "expired" and parse(expired)[1]["error"]["code"] == "batch_expired"
    revoked = await runner(guard)._result(BATCH, request(), _TaskState(0), key_valid=False)
    assert parse(revoked)[1]["response"]["status_code"] == 401
    assert guard.calls == 0


async def test_the_gate_admits_fewer_lines_under_load():
    gate = LoadGate(normal=3, under_load=1)
    peak = 0

    async def line():
        nonlocal peak
        async with gate.slot():
            peak = max(peak, gate.in_flight)
            await asyncio.sleep(0.01)

    await asyncio.gather(*(line() for _ in range(9)))
    assert peak == 3
    await gate.set_busy(True)
    peak = 0
    await asyncio.gather(*(line() for _ in range(4)))
    assert peak == 1


def test_the_visibility_timeout_must_outlast_the_longest_task():
    with pytest.raises(ValueError, match="LLMESH_BATCH_VISIBILITY_TIMEOUT_S"):
        BatchSettings(
            batch_chunk_lines=20,
            batch_line_concurrency_under_load=1,
            batch_line_timeout_s=120,
            batch_visibility_timeout_s=600,
        )
    settings = BatchSettings(
        batch_chunk_lines=10,
        batch_line_concurrency_under_load=5,
        batch_line_timeout_s=30,
        batch_redis_wait_s=10,
        batch_visibility_timeout_s=71,
    )
    assert settings.task_time_limit_s == 70
