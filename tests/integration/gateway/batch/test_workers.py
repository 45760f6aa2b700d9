"""Batches run by real Celery workers (``python -m gateway.batch`` processes) on a real Redis
broker, through a real gateway pipeline in front of fake upstream services: the official client
end to end, line errors, cancelling, yielding to interactive traffic, and no line lost or done
twice when a worker is SIGKILLed or Redis restarts mid-batch."""

import asyncio
import collections
import contextlib
import json
import os
import signal
import time

import httpx
import openai
import pytest
import redis
from typer.testing import CliRunner

from cli.main import app as llmesh_cli
from gateway.tenancy import Tenancy
from support.batch_workers import BatchTestbed
from support.fake_upstreams import BLOCKED_WORD, FAIL_GENERATE, ROUTED_MODEL, SLOW_STREAM, reply_for
from support.redis_server import RedisServer

CHAT = "/v1/chat/completions"
TERMINAL = {"completed", "failed", "expired", "cancelled"}
# Short enough that a killed worker's task comes back within seconds, long enough for any task
# here, on a loaded machine too (the worker checks: ceil(5 / 2) x 3 s + 2 s < 12 s).
WORKER = {
    "batch_chunk_lines": 5,
    "batch_line_concurrency": 4,
    "batch_line_concurrency_under_load": 2,
    "batch_line_timeout_s": 3,
    "batch_redis_wait_s": 2,
    "batch_visibility_timeout_s": 12,
    "batch_restore_interval_s": 1,
    "batch_ready_interval_s": 0.5,
}


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("batch-redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def bed(redis_server, tmp_path_factory):
    testbed = await BatchTestbed(redis_server.url, tmp_path_factory.mktemp("batch-workers")).start()
    yield testbed
    await testbed.stop()


@pytest.fixture(scope="module")
async def workers(bed):
    """Two worker nodes; a test that kills one replaces it."""
    started = list(await asyncio.gather(bed.start_worker(**WORKER), bed.start_worker(**WORKER)))
    yield started
    await asyncio.gather(*(asyncio.to_thread(worker.stop) for worker in started))


@pytest.fixture
async def client(bed):
    async with bed.client("acme") as client:
        yield client


@contextlib.contextmanager
def slow(bed, delay_s=0.05):
    """Each generation takes ``delay_s``, so that a batch is still running when a test acts."""
    bed.upstreams.generate_delay_s = delay_s
    try:
        yield
    finally:
        bed.upstreams.generate_delay_s = 0.0


def chat_line(custom_id, content):
    body = {"model": "auto", "messages": [{"role": "user", "content": content}], "max_tokens": 32}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body})


async def submit(client, lines, endpoint=CHAT):
    source = await client.files.create(file=("in.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch")
    return await client.batches.create(input_file_id=source.id, endpoint=endpoint, completion_window="24h")


async def wait_until(client, batch_id, done, timeout_s=60.0):
    """Polls the batch until ``done(batch)``; Redis may be away for a moment meanwhile."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            batch = await client.batches.retrieve(batch_id)
            if done(batch):
                return batch
        except (openai.APIConnectionError, openai.InternalServerError):
            pass
        assert time.monotonic() < deadline, f"batch {batch_id} not done after {timeout_s}s"
        await asyncio.sleep(0.1)


async def finished(client, batch_id, timeout_s=60.0):
    return await wait_until(client, batch_id, lambda batch: batch.status in TERMINAL, timeout_s)


async def output_lines(client, batch):
    """Every line of the batch's output and error files, parsed."""
    lines = []
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            content = await client.files.content(file_id)
            lines += [json.loads(text) for text in content.text.splitlines()]
    return lines


def exactly_once(lines, custom_ids):
    counts = collections.Counter(line["custom_id"] for line in lines)
    assert set(counts) == set(custom_ids), set(custom_ids) ^ set(counts)
    assert [custom_id for custom_id, n in counts.items() if n != 1] == []


async def test_a_batch_through_the_openai_client(bed, workers, client):
    custom_ids = [f"question-{i}" for i in range(25)]
    batch = await submit(client, [chat_line(custom_id, f"what is {custom_id}?") for custom_id in custom_ids])
    seen = {batch.status}
    batch = await wait_until(client, batch.id, lambda b: seen.add(b.status) or b.status in TERMINAL)
    assert batch.status == "completed", batch
    assert seen <= {"validating", "in_progress", "finalizing", "completed"}
    assert batch.request_counts.model_dump() == {"completed": 25, "failed": 0, "total": 25}
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at and batch.error_file_id is None
    assert batch.usage.output_tokens == 25 * len(reply_for(ROUTED_MODEL))
    output = await client.files.retrieve(batch.output_file_id)
    assert output.purpose == "batch_output"
    lines = await output_lines(client, batch)
    exactly_once(lines, custom_ids)
    # In input order, in OpenAI's line format.
    assert [line["custom_id"] for line in lines] == custom_ids
    first = lines[0]
    assert first["error"] is None and first["id"].startswith("batch_req_")
    assert first["response"]["status_code"] == 200
    body = first["response"]["body"]
    assert body["object"] == "chat.completion" and body["id"] == first["response"]["request_id"]
    assert body["choices"][0]["message"]["content"] == reply_for(ROUTED_MODEL)
    # Each line went through the pipeline as the tenant's own request.
    assert {r.context.tenant_id for r in bed.upstreams.requests["preprocess"][-25:]} == {"acme"}
    # Once finished, its input is free to delete; the output stays.
    assert (await client.files.delete(batch.input_file_id)).deleted
    assert (await client.files.content(batch.output_file_id)).text


async def test_line_failures_and_refusals_land_in_the_right_file(workers, client):
    def prompt_line(custom_id, prompt):
        body = {"model": "smollm2-135m-instruct", "prompt": prompt, "max_tokens": 5}
        return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/completions", "body": body})

    lines = [
        prompt_line("fine", "Once"),
        prompt_line("broken", f"{FAIL_GENERATE} now"),
        prompt_line("blocked", BLOCKED_WORD),
    ]
    batch = await finished(client, (await submit(client, lines, endpoint="/v1/completions")).id)
    assert batch.status == "completed"
    assert batch.request_counts.model_dump() == {"completed": 2, "failed": 1, "total": 3}
    output = {line["custom_id"]: line for line in await output_lines(client, batch)}
    assert output["fine"]["response"]["body"]["choices"][0]["text"] == reply_for("smollm2-135m-instruct")[:5]
    # A refusal is an answer (as interactively), with finish_reason content_filter.
    assert output["blocked"]["response"]["body"]["choices"][0]["finish_reason"] == "content_filter"
    # A server error that stays through the retries is the line's error, in OpenAI's shape.
    broken = output["broken"]["response"]
    assert broken["status_code"] == 502 and broken["body"]["error"]["type"] == "server_error"
    error_file = await client.files.content(batch.error_file_id)
    assert [json.loads(text)["custom_id"] for text in error_file.text.splitlines()] == ["broken"]


async def test_cancel_mid_batch(bed, workers, client):
    with slow(bed):
        custom_ids = [f"c{i}" for i in range(200)]
        batch = await submit(client, [chat_line(custom_id, "hello") for custom_id in custom_ids])
        await wait_until(client, batch.id, lambda b: b.request_counts.completed >= 20)
        assert (await client.batches.cancel(batch.id)).status == "cancelling"
        batch = await finished(client, batch.id)
    assert batch.status == "cancelled" and batch.cancelled_at is not None
    lines = await output_lines(client, batch)
    exactly_once(lines, custom_ids)
    cancelled = [line for line in lines if line["error"]]
    assert cancelled and all(line["error"]["code"] == "batch_cancelled" for line in cancelled)
    counts = batch.request_counts
    answered = [line for line in lines if line["response"] and line["response"]["status_code"] == 200]
    assert counts.completed == len(answered) and counts.completed + counts.failed == 200
    error = await client.batches.cancel(batch.id)
    assert error.status == "cancelled"


async def test_a_batch_whose_input_is_lost_from_storage_fails_visibly(bed, workers, client):
    source = await client.files.create(file=("in.jsonl", (chat_line("lost", "hi") + "\n").encode()), purpose="batch")
    (bed.settings.files_dir / source.id).unlink()
    batch = await client.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h")
    batch = await finished(client, batch.id)
    assert batch.status == "failed" and batch.failed_at is not None
    assert [(e.code, e.message) for e in batch.errors.data] == [
        ("input_file_missing", "The input file is missing from storage.")
    ]


async def test_revoking_the_key_stops_its_batch(bed, workers):
    tenancy = Tenancy(bed.settings)
    key, record = await tenancy.create_key("initech", rpm=1_000_000, tpm=10**9)
    with slow(bed):
        async with openai.AsyncOpenAI(base_url=bed.base_url, api_key=key) as initech:
            batch = await submit(initech, [chat_line(f"v{i}", "hello") for i in range(100)])
            await wait_until(initech, batch.id, lambda b: b.request_counts.completed >= 10)
            await tenancy.revoke(record.key_id)
        # The batch is still the tenant's; a new key of the same tenant reads it.
        key, _ = await tenancy.create_key("initech")
        await tenancy.close()
        async with openai.AsyncOpenAI(base_url=bed.base_url, api_key=key) as initech:
            batch = await finished(initech, batch.id)
            lines = await output_lines(initech, batch)
    assert batch.status == "completed" and 10 <= batch.request_counts.completed < 100
    revoked = [line for line in lines if line["response"]["status_code"] == 401]
    assert len(revoked) == batch.request_counts.failed == 100 - batch.request_counts.completed
    assert revoked[0]["response"]["body"]["error"]["type"] == "authentication_error"


async def test_a_batch_past_its_window_expires_with_what_it_has_done(bed, workers, client, redis_server):
    with slow(bed):
        custom_ids = [f"e{i}" for i in range(100)]
        batch = await submit(client, [chat_line(custom_id, "hello") for custom_id in custom_ids])
        await wait_until(client, batch.id, lambda b: b.request_counts.completed >= 10)
        # Its 24 hours are up (as far as the workers can tell).
        redis.Redis.from_url(redis_server.url).hset(f"llmesh:batch:{batch.id}", "expires_at", int(time.time()) - 1)
        batch = await finished(client, batch.id)
    assert batch.status == "expired" and batch.expired_at is not None
    lines = await output_lines(client, batch)
    exactly_once(lines, custom_ids)
    expired = [line for line in lines if line["error"]]
    assert expired and {line["error"]["code"] for line in expired} == {"batch_expired"}
    answered = [line for line in lines if line["response"] and line["response"]["status_code"] == 200]
    assert batch.request_counts.completed == len(answered) and len(answered) + len(expired) <= 100


async def test_batch_lines_yield_to_interactive_requests(bed, workers, client):
    """While interactive requests are in flight, each worker process runs at most
    batch_line_concurrency_under_load (2) lines; without them, up to batch_line_concurrency (4)."""
    interactive = {"model": "auto", "stream": True, "messages": [{"role": "user", "content": SLOW_STREAM}]}
    quiet = asyncio.Event()

    async def interactive_traffic():
        headers = {"Authorization": f"Bearer {bed.keys['globex']}"}
        async with httpx.AsyncClient(base_url=bed.base_url, headers=headers, timeout=30) as http:
            while not quiet.is_set():
                async with http.stream("POST", "/chat/completions", json=interactive) as stream:
                    async for _ in stream.aiter_lines():
                        pass

    with slow(bed, 0.1):
        batch = await submit(client, [chat_line(f"y{i}", "hello") for i in range(100)])
        await wait_until(client, batch.id, lambda b: b.request_counts.completed >= 1)
        bed.upstreams.reset_peak()
        await wait_until(client, batch.id, lambda b: b.request_counts.completed >= 20)
        without_load = bed.upstreams.peak_generating
        traffic = asyncio.create_task(interactive_traffic())
        # The workers see the load within a poll or two; lines already started finish.
        await asyncio.sleep(0.6)
        bed.upstreams.reset_peak()
        await asyncio.sleep(1.0)
        under_load = bed.upstreams.peak_generating
        quiet.set()
        await traffic
        batch = await finished(client, batch.id)
    under_load_limit = len(workers) * WORKER["batch_line_concurrency_under_load"]
    assert without_load > under_load_limit
    assert under_load <= under_load_limit
    assert batch.status == "completed" and batch.request_counts.completed == 100


async def test_operator_cli_submit_status_results(bed, workers, tmp_path):
    source = tmp_path / "questions.jsonl"
    source.write_text("\n".join(chat_line(f"cli{i}", "hi") for i in range(12)) + "\n")
    connection = ["--base-url", bed.base_url, "--api-key", bed.keys["acme"]]
    runner = CliRunner()

    def llmesh(*args):
        result = runner.invoke(llmesh_cli, [*args, *connection])
        assert result.exit_code == 0, result.output
        return result.output

    submitted = await asyncio.to_thread(llmesh, "batch", "submit", str(source), "--interval", "0.2")
    assert "completed, 0 failed of 12" in submitted
    batch_id = submitted.split("submitted batch ")[1].split()[0]
    status = json.loads(await asyncio.to_thread(llmesh, "batch", "status", batch_id, "--json"))
    assert status["status"] == "completed" and status["request_counts"]["completed"] == 12
    await asyncio.to_thread(llmesh, "batch", "results", batch_id, "--out", str(tmp_path))
    output = (tmp_path / f"{batch_id}_output.jsonl").read_text().splitlines()
    assert [json.loads(line)["custom_id"] for line in output] == [f"cli{i}" for i in range(12)]
    assert batch_id in await asyncio.to_thread(llmesh, "batch", "list")


def lines_completed(workers):
    return sum(
        float(line.split()[-1])
        for worker in workers
        for line in worker.metrics().splitlines()
        if line.startswith('llmesh_batch_lines_total{outcome="completed"}')
    )


def tasks_redelivered(workers):
    return sum(
        float(line.split()[-1])
        for worker in workers
        for line in worker.metrics().splitlines()
        if line.startswith("llmesh_batch_tasks_total") and 'redelivered="true"' in line
    )


async def test_worker_health_and_metrics(bed, workers, client):
    assert all(worker.ready() for worker in workers)
    before = lines_completed(workers)
    batch = await finished(client, (await submit(client, [chat_line(f"m{i}", "hi") for i in range(10)])).id)
    assert batch.status == "completed"
    assert lines_completed(workers) == before + 10
    text = workers[0].metrics()
    assert "llmesh_batch_queue_length 0.0" in text
    rate = next(line for line in text.splitlines() if line.startswith("llmesh_batch_lines_per_second "))
    assert float(rate.split()[-1]) > 0


async def test_a_worker_killed_with_sigkill_loses_and_doubles_nothing(bed, workers, client):
    first, second = workers
    with slow(bed):
        custom_ids = [f"k{i}" for i in range(240)]
        batch = await submit(client, [chat_line(custom_id, f"tell me about {custom_id}") for custom_id in custom_ids])
        await wait_until(client, batch.id, lambda b: b.request_counts.completed >= 40)
        # A pool process dies midway through a task: its worker hands the task back at once.
        [pool_pid] = first.pool_pids()
        os.kill(pool_pid, signal.SIGKILL)
        await wait_until(client, batch.id, lambda b: b.request_counts.completed >= 100)
        # A whole worker dies: its tasks come back after the visibility timeout, to the other
        # worker or to the one that replaces it.
        second.kill()
        workers[1] = await bed.start_worker(**WORKER)
        batch = await finished(client, batch.id, timeout_s=90)
    assert batch.status == "completed", batch
    assert batch.request_counts.model_dump() == {"completed": 240, "failed": 0, "total": 240}
    exactly_once(await output_lines(client, batch), custom_ids)
    # Both kills did interrupt work: tasks of each were delivered again (to the first worker
    # or to the replacement).
    assert tasks_redelivered(workers) >= 2


async def test_redis_restarted_mid_batch_loses_and_doubles_nothing(bed, workers, client, redis_server):
    with slow(bed):
        custom_ids = [f"r{i}" for i in range(240)]
        batch = await submit(client, [chat_line(custom_id, "hello") for custom_id in custom_ids])
        await wait_until(client, batch.id, lambda b: b.request_counts.completed >= 60)
        await asyncio.to_thread(redis_server.restart)
        batch = await finished(client, batch.id, timeout_s=90)
    assert batch.status == "completed", batch
    lines = await output_lines(client, batch)
    assert batch.request_counts.model_dump() == {"completed": 240, "failed": 0, "total": 240}, [
        line for line in lines if line["response"]["status_code"] != 200
    ][:3]
    exactly_once(lines, custom_ids)
