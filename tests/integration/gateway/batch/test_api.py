"""The Files and Batch APIs through the official openai client, on a real gateway with real
Redis (no workers here: tests/integration/gateway/batch/test_workers.py runs batches): every bad file
and bad request is a 4xx in OpenAI's shape, and every object is its tenant's alone."""

import json

import httpx
import openai
import pytest
import redis

from support.batch_workers import BatchTestbed

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]
# Small limits, so that oversized files are quick to make.
MAX_BYTES = 4096
MAX_LINES = 5


def line(custom_id="r1", url=CHAT, body=None, **extra):
    body = body if body is not None else {"model": "auto", "messages": HI}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body, **extra})


def jsonl(*lines):
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
async def bed(redis_url, tmp_path_factory):
    url = redis_url.rsplit("/", 1)[0] + "/5"
    redis.Redis.from_url(url).flushdb()
    testbed = await BatchTestbed(
        url, tmp_path_factory.mktemp("batch-api"), files_max_bytes=MAX_BYTES, batch_max_lines=MAX_LINES
    ).start()
    yield testbed
    await testbed.stop()


@pytest.fixture(scope="module")
async def acme(bed):
    async with bed.client("acme", max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
async def globex(bed):
    async with bed.client("globex", max_retries=0) as client:
        yield client


async def upload(client, content, name="in.jsonl"):
    return await client.files.create(file=(name, content), purpose="batch")


async def rejected(call, status=400):
    with pytest.raises(openai.APIStatusError) as raised:
        await call
    error = raised.value
    assert error.status_code == status, error.body
    # OpenAI's error object: message, type, param, code.
    assert set(error.body) == {"message", "type", "param", "code"}
    return error


async def test_upload_retrieve_list_content_delete(acme):
    content = jsonl(line("a"), line("b"))
    uploaded = await upload(acme, content, "questions.jsonl")
    assert (uploaded.purpose, uploaded.bytes, uploaded.filename) == ("batch", len(content), "questions.jsonl")
    assert uploaded.id.startswith("file-")
    assert (await acme.files.retrieve(uploaded.id)).id == uploaded.id
    assert (await acme.files.content(uploaded.id)).content == content
    listed = [f.id async for f in acme.files.list(purpose="batch")]
    assert uploaded.id in listed
    deleted = await acme.files.delete(uploaded.id)
    assert deleted.deleted and deleted.id == uploaded.id
    await rejected(acme.files.retrieve(uploaded.id), 404)


async def test_files_list_pages_newest_first(acme):
    ids = [(await upload(acme, jsonl(line(f"p{i}")))).id for i in range(3)]
    page = await acme.files.list(limit=2)
    assert [f.id for f in page.data] == ids[::-1][:2] and page.has_more
    following = await acme.files.list(limit=2, after=page.data[-1].id)
    assert following.data[0].id == ids[0]
    ascending = await acme.files.list(order="asc", after=ids[0], limit=1)
    assert [f.id for f in ascending.data] == [ids[1]]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (jsonl(line("a"), '{"custom_id": "b", "method": "POST",'), ["Line 2", "not valid JSON"]),
        (jsonl(line("a"), line("b", url="/v1/embeddings")), ["Line 2", "'url'", "/v1/embeddings", "not a supported"]),
        (jsonl(line(""), line("b")), ["Line 1", "'custom_id' is required"]),
        (jsonl(json.dumps({"method": "POST", "url": CHAT, "body": {}})), ["Line 1", "'custom_id' is required"]),
        (jsonl(line("a"), line("b"), line("a")), ["Line 3", "custom_id 'a' is already used on line 1"]),
        (jsonl(line("a", method="GET")), ["Line 1", "'method' must be \"POST\""]),
        (jsonl(line("a", body={"messages": []})), ["Line 1", "'body.messages'"]),
        (jsonl(line("a", body={"messages": HI, "temperature": 9})), ["Line 1", "'body.temperature'"]),
        (jsonl(line("a", body={"model": "gpt-4o", "messages": HI})), ["Line 1", "gpt-4o", "does not exist"]),
        (jsonl(line("a", body={"messages": HI, "stream": True})), ["Line 1", "'body.stream' is not supported"]),
        (
            jsonl(line("a"), line("b", url="/v1/completions", body={"prompt": "x"})),
            ["Line 2", "a file has one endpoint"],
        ),
        (jsonl(*(line(f"n{i}") for i in range(MAX_LINES + 1))), [f"Line {MAX_LINES + 1}", f"more than {MAX_LINES}"]),
        (b"\n\n", ["no requests"]),
        (
            b'{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"prompt": "\xff"}}',
            ["Line 1", "UTF-8"],
        ),
    ],
    ids=[
        "malformed-json",
        "unknown-endpoint",
        "empty-custom-id",
        "missing-custom-id",
        "duplicate-custom-id",
        "method",
        "empty-messages",
        "temperature",
        "unknown-model",
        "stream",
        "mixed-endpoints",
        "too-many-lines",
        "empty",
        "not-utf8",
    ],
)
async def test_a_bad_file_is_refused_naming_its_line(acme, content, words):
    error = await rejected(upload(acme, content))
    assert error.body["param"] == "file" and error.body["type"] == "invalid_request_error"
    for word in words:
        assert word in error.body["message"], error.body["message"]


async def test_an_oversize_file_is_413(acme, bed):
    body = jsonl(*(line(f"big{i}", body={"prompt": "x" * 900}, url="/v1/completions") for i in range(5)))
    assert len(body) > MAX_BYTES
    error = await rejected(upload(acme, body), 413)
    assert str(MAX_BYTES) in error.body["message"]


async def test_upload_refuses_other_purposes_and_unknown_fields(acme, bed):
    error = await rejected(acme.files.create(file=("x.jsonl", jsonl(line())), purpose="fine-tune"))
    assert error.body["param"] == "purpose"
    error = await rejected(
        acme.files.create(
            file=("x.jsonl", jsonl(line())), purpose="batch", expires_after={"anchor": "created_at", "seconds": 3600}
        )
    )
    assert error.body["param"] == "expires_after" and "Unsupported parameter" in error.body["message"]
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {bed.keys['acme']}"}) as http:
        response = await http.post(f"{bed.base_url}/files", data={"purpose": "batch"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "file"


async def test_batch_create_checks_its_request(acme):
    chat_file = await upload(acme, jsonl(line("a")))

    async def create(**overrides):
        params = {"input_file_id": chat_file.id, "endpoint": CHAT, "completion_window": "24h", **overrides}
        return await acme.batches.create(**params)

    error = await rejected(create(endpoint="/v1/embeddings"))
    assert error.body["param"] == "endpoint"
    error = await rejected(create(endpoint="/v1/completions"))
    assert error.body["param"] == "endpoint" and CHAT in error.body["message"]
    error = await rejected(create(completion_window="1h"))
    assert error.body["param"] == "completion_window"
    error = await rejected(create(input_file_id="file-doesnotexist"), 404)
    assert error.body["param"] == "input_file_id"
    error = await rejected(create(output_expires_after={"anchor": "created_at", "seconds": 3600}))
    assert error.body["param"] == "output_expires_after"
    error = await rejected(create(extra_body={"priority": "high"}))
    assert error.body["param"] == "priority" and "Unsupported parameter" in error.body["message"]
    error = await rejected(create(metadata={f"k{i}": "v" for i in range(17)}))
    assert error.body["param"] == "metadata"


async def test_a_batch_is_created_validating_and_holds_its_input(acme):
    source = await upload(acme, jsonl(line("a"), line("b")))
    batch = await acme.batches.create(
        input_file_id=source.id, endpoint=CHAT, completion_window="24h", metadata={"job": "nightly"}
    )
    assert batch.status == "validating" and batch.id.startswith("batch_")
    assert batch.request_counts.total == 2 and batch.metadata == {"job": "nightly"}
    assert batch.expires_at == batch.created_at + 24 * 3600
    assert (await acme.batches.retrieve(batch.id)).input_file_id == source.id
    assert batch.id in [b.id async for b in acme.batches.list()]
    # Its input cannot be deleted while the batch has not finished.
    error = await rejected(acme.files.delete(source.id), 409)
    assert batch.id in error.body["message"]
    cancelling = await acme.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    assert (await acme.batches.cancel(batch.id)).status == "cancelling"


async def test_another_tenants_objects_answer_as_unknown_ones(acme, globex):
    source = await upload(acme, jsonl(line("a")))
    batch = await acme.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h")
    unknown_file, unknown_batch = "file-" + "0" * 24, "batch_" + "0" * 24
    calls = {
        "retrieve file": lambda client, file_id, batch_id: client.files.retrieve(file_id),
        "file content": lambda client, file_id, batch_id: client.files.content(file_id),
        "delete file": lambda client, file_id, batch_id: client.files.delete(file_id),
        "retrieve batch": lambda client, file_id, batch_id: client.batches.retrieve(batch_id),
        "cancel batch": lambda client, file_id, batch_id: client.batches.cancel(batch_id),
    }
    for name, call in calls.items():
        theirs = (await rejected(call(globex, source.id, batch.id), 404)).body
        unknown = (await rejected(call(globex, unknown_file, unknown_batch), 404)).body
        # The same answer, but for the id it names.
        theirs["message"] = theirs["message"].replace(source.id, unknown_file).replace(batch.id, unknown_batch)
        assert theirs == unknown, name
    error = await rejected(globex.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h"), 404)
    assert error.body["param"] == "input_file_id"
    assert source.id not in [f.id async for f in globex.files.list()]
    assert batch.id not in [b.id async for b in globex.batches.list()]
    # And acme still has both.
    assert (await acme.batches.retrieve(batch.id)).id == batch.id


async def test_no_key_no_files(bed):
    async with openai.AsyncOpenAI(base_url=bed.base_url, api_key="llm_nope_nope", max_retries=0) as client:
        await rejected(client.files.list(), 401)
        await rejected(client.batches.list(), 401)
