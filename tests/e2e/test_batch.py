"""Batches through the real stack with the official openai client: the worker `make run` starts
runs every line through the guard, the services and Triton, and serves its metrics."""

import json
import sqlite3
import time

import httpx
import openai
import pytest
import redis

from gateway import audit
from mesh.catalog import default_models
from support.traces import service_edges

# An answer may come from any model the router or a failover picks.
SERVED_MODELS = {model.name for model in default_models()}

pytestmark = pytest.mark.e2e

QUESTIONS = ["What does json.dumps do?", "Explain os.path.join.", "What is a list comprehension?"]


@pytest.fixture(scope="module")
def client(base_url, api_key):
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key=api_key) as client:
        yield client


def _file(lines):
    return ("\n".join(json.dumps(line) for line in lines) + "\n").encode()


def _run(client, content, endpoint, timeout_s=180):
    source = client.files.create(file=("batch.jsonl", content), purpose="batch")
    batch = client.batches.create(input_file_id=source.id, endpoint=endpoint, completion_window="24h")
    deadline = time.monotonic() + timeout_s
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.5)
        batch = client.batches.retrieve(batch.id)
    return batch


def test_a_chat_batch_end_to_end(client, stack):
    lines = [
        {
            "custom_id": f"q{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "auto", "messages": [{"role": "user", "content": q}], "max_tokens": 16, "temperature": 0},
        }
        for i, q in enumerate(QUESTIONS)
    ]
    batch = _run(client, _file(lines), "/v1/chat/completions")
    assert batch.status == "completed", batch
    assert batch.request_counts.completed == len(QUESTIONS) and batch.request_counts.failed == 0
    output = [json.loads(text) for text in client.files.content(batch.output_file_id).text.splitlines()]
    assert [line["custom_id"] for line in output] == ["q0", "q1", "q2"]
    for line in output:
        body = line["response"]["body"]
        assert line["response"]["status_code"] == 200 and body["object"] == "chat.completion"
        assert body["model"] in SERVED_MODELS
        assert body["choices"][0]["message"]["content"].strip()
        assert 0 < body["usage"]["completion_tokens"] <= 16
    assert batch.usage.output_tokens == sum(line["response"]["body"]["usage"]["completion_tokens"] for line in output)
    # The same guard as interactive requests: every line has its audit record, as the tenant's.
    client_redis = redis.Redis.from_url(stack.env["LLMESH_REDIS_URL"], decode_responses=True)
    records = [json.loads(fields["record"]) for _, fields in client_redis.xrange(audit.STREAM)]
    audited = {record["request_id"]: record for record in records}
    for line in output:
        record = audited[line["response"]["request_id"]]
        assert record["tenant"] == "e2e" and record["status"] == "ok"


BATCH_EDGES = {
    ("batch", "preprocess"),
    ("batch", "router"),
    ("batch", "inference"),
    ("inference", "triton"),
    ("batch", "postprocess"),
}


def _line_spans(stack, batch_id):
    """The batch's batch.line spans, from the collector's span store."""
    with sqlite3.connect(stack.env["LLMESH_TRACE_DB"]) as db:
        rows = db.execute(
            "SELECT body FROM spans WHERE json_extract(body, '$.name') = 'batch.line'"
            " AND json_extract(body, '$.attributes.\"llmesh.batch.id\"') = ?",
            (batch_id,),
        ).fetchall()
    return [json.loads(body) for (body,) in rows]


def test_each_batch_line_is_traced_through_every_hop(client, stack):
    lines = [
        {
            "custom_id": f"t{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "llmesh-small", "messages": [{"role": "user", "content": q}], "max_tokens": 8},
        }
        for i, q in enumerate(QUESTIONS)
    ]
    batch = _run(client, _file(lines), "/v1/chat/completions")
    assert batch.status == "completed", batch
    # Spans are exported in batches (Triton's too); allow for a loaded machine. A task's lines
    # share its trace. Triton 2.51 now and then starts a root trace of its own (see
    # test_stack.py), so one trace with every edge is enough.
    deadline = time.monotonic() + 20
    while True:
        lines = _line_spans(stack, batch.id)
        collected = [
            httpx.get(f"http://127.0.0.1:{stack.ports.collector}/v1/traces/{trace_id}", timeout=5).json()["spans"]
            for trace_id in {line["trace_id"] for line in lines}
        ]
        if len(lines) == len(QUESTIONS) and any(service_edges(spans) >= BATCH_EDGES for spans in collected):
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sorted(line["attributes"]["llmesh.batch.custom_id"] for line in lines) == ["t0", "t1", "t2"]
    assert any(service_edges(spans) >= BATCH_EDGES for spans in collected), [
        service_edges(spans) for spans in collected
    ]
    spans = next(spans for spans in collected if service_edges(spans) >= BATCH_EDGES)
    by_id = {span["span_id"]: span for span in spans}
    chat = next(span for span in spans if span["name"] == "gateway.chat")
    line = by_id[chat["parent_span_id"]]
    assert line["name"] == "batch.line" and by_id[line["parent_span_id"]]["name"] == "batch.chunk"
    assert chat["attributes"]["llmesh.tenant.id"] == "e2e"


def test_a_completions_batch_and_the_worker_metrics(client, stack):
    lines = [
        {
            "custom_id": "once",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": "llmesh-small", "prompt": "The json module", "max_tokens": 8},
        }
    ]
    batch = _run(client, _file(lines), "/v1/completions")
    assert batch.status == "completed", batch
    [line] = [json.loads(text) for text in client.files.content(batch.output_file_id).text.splitlines()]
    assert line["response"]["body"]["object"] == "text_completion"
    # A failover would answer with another model; the inference log then says why.
    inference_log = stack.run_dir / "logs" / "inference.log"
    failures = [row for row in inference_log.read_text().splitlines() if "model failed" in row]
    assert line["response"]["body"]["model"] == "llmesh-small", failures
    metrics = httpx.get(f"http://127.0.0.1:{stack.ports.batch_metrics}/metrics", timeout=5).text
    completed = [row for row in metrics.splitlines() if row.startswith('llmesh_batch_lines_total{outcome="completed"}')]
    assert completed and float(completed[0].split()[-1]) >= 1
    assert "llmesh_batch_queue_length" in metrics
