"""The gateway on a real uvicorn server: the official openai client, unmodified, and a client
that leaves in the middle of a stream."""

import asyncio
import socket

import httpx
import openai
import pytest
import uvicorn

from gateway.pipeline import Pipeline
from gateway.rest import RestServer, create_app
from support.fake_upstreams import (
    FAIL_MID_STREAM,
    ROUTE_REASON,
    ROUTED_MODEL,
    SLOW_STREAM,
    gateway_settings,
    reply_for,
)

HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
async def base_url(upstreams):
    settings = gateway_settings(upstreams[1])
    pipeline = Pipeline(settings)
    # A socket bound here gives the server a free port known before it starts.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = RestServer(uvicorn.Config(create_app(settings, pipeline), log_config=None, access_log=False))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    await serving
    sock.close()
    await pipeline.close()


@pytest.fixture(scope="module")
async def client(base_url):
    async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0) as client:
        yield client


async def test_chat(client):
    raw = await client.chat.completions.with_raw_response.create(model="auto", messages=HELLO)
    assert raw.headers["x-llmesh-model"] == ROUTED_MODEL
    assert raw.headers["x-llmesh-route-reason"] == ROUTE_REASON
    completion = raw.parse()
    assert completion.id == raw.headers["x-request-id"]
    assert completion.model == ROUTED_MODEL
    assert completion.choices[0].message.content == reply_for(ROUTED_MODEL)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens == len(reply_for(ROUTED_MODEL))


async def test_chat_stream(client):
    stream = await client.chat.completions.create(
        model="smollm2-135m-instruct", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == reply_for("smollm2-135m-instruct")
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "stop"
    assert chunks[-1].usage.total_tokens == 2 + len(reply_for("smollm2-135m-instruct"))


async def test_completions(client):
    completion = await client.completions.create(model="auto", prompt="Once", max_tokens=5)
    assert completion.choices[0].text == reply_for(ROUTED_MODEL)[:5]
    assert completion.choices[0].finish_reason == "length"
    stream = await client.completions.create(model="auto", prompt="Once", stream=True)
    assert "".join([chunk.choices[0].text async for chunk in stream]) == reply_for(ROUTED_MODEL)


async def test_models(client):
    ids = [model.id async for model in client.models.list()]
    assert ids == ["smollm2-student", "smollm2-135m-instruct", "llmesh-small", "all-minilm-l6-v2", "auto"]
    model = await client.models.retrieve("llmesh-small")
    assert model.owned_by == "llmesh" and model.model_extra["context_length"] == 256
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("gpt-4o")


async def test_several_answers_streamed_and_not(client):
    completion = await client.chat.completions.create(model="auto", messages=HELLO, n=3)
    assert [choice.index for choice in completion.choices] == [0, 1, 2]
    assert {choice.message.content for choice in completion.choices} == {reply_for(ROUTED_MODEL)}
    assert completion.usage.completion_tokens == 3 * len(reply_for(ROUTED_MODEL))
    stream = await client.chat.completions.create(
        model="auto", messages=HELLO, n=2, stream=True, stream_options={"include_usage": True}
    )
    texts, finished, usage = {0: "", 1: ""}, [], None
    async for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished.append(choice.index)
        usage = chunk.usage or usage
    assert texts == {0: reply_for(ROUTED_MODEL), 1: reply_for(ROUTED_MODEL)}
    assert sorted(finished) == [0, 1]
    assert usage.completion_tokens == 2 * len(reply_for(ROUTED_MODEL))


async def test_errors_are_typed(client):
    with pytest.raises(openai.BadRequestError) as raised:
        await client.chat.completions.create(model="auto", messages=HELLO, temperature=2.5)
    assert raised.value.param == "temperature"
    with pytest.raises(openai.NotFoundError) as raised:
        await client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert raised.value.code == "model_not_found"


async def test_mid_stream_error_raises(client):
    stream = await client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": FAIL_MID_STREAM}], stream=True
    )
    with pytest.raises(openai.APIError, match="inference"):
        async for _ in stream:
            pass


async def test_leaving_mid_stream_cancels_the_upstream_calls(base_url, upstreams):
    fakes, _ = upstreams
    request = {"messages": [{"role": "user", "content": SLOW_STREAM}], "stream": True}
    async with (
        httpx.AsyncClient(base_url=base_url) as http,
        http.stream("POST", "/v1/chat/completions", json=request) as response,
    ):
        assert (await anext(aiter(response.aiter_lines()))).startswith("data: ")
    # The fake pauses 0.2 s per chunk; the whole answer would take over a second.
    for _ in range(50):
        if fakes.cancelled_streams:
            break
        await asyncio.sleep(0.02)
    assert fakes.cancelled_streams == 1
