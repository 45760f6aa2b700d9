"""Gateway REST edge over in-process fake upstreams (httpx's ASGI transport, no socket)."""

import asyncio
import json
import logging

import httpx
import pytest
import uvicorn
from opentelemetry.trace import SpanKind

from gateway.pipeline import Pipeline
from gateway.rest import RestServer, create_app
from mesh import semconv
from mesh.net import free_port
from mesh.server import start_service
from support.fake_upstreams import (
    BLOCKED_MESSAGE,
    BLOCKED_WORD,
    FAIL_MID_STREAM,
    ROUTE_REASON,
    ROUTED_MODEL,
    gateway_settings,
    reply_for,
    unused_addr,
)

MAX_BODY = 4096
CHAT = "/v1/chat/completions"
HELLO = {"messages": [{"role": "user", "content": "hi"}]}


async def _client(settings):
    pipeline = Pipeline(settings)
    transport = httpx.ASGITransport(app=create_app(settings, pipeline))
    return pipeline, httpx.AsyncClient(transport=transport, base_url="http://gateway")


@pytest.fixture(scope="module")
def upstreams(either_upstreams):
    """Every test of the module twice: upstreams over gRPC, and hosted in process."""
    return either_upstreams


@pytest.fixture(scope="module")
async def client(upstreams, spans):
    pipeline, client = await _client(gateway_settings(upstreams[1], max_body_bytes=MAX_BODY))
    async with client:
        yield client
    await pipeline.close()


def _sse(body: str) -> list:
    events = [block for block in body.split("\n\n") if block]
    assert all(event.startswith("data: ") for event in events)
    return [event[6:] if event == "data: [DONE]" else json.loads(event[6:]) for event in events]


def _assert_openai_error(response: httpx.Response, status: int, error_type: str, param=None, code=None):
    assert response.status_code == status, response.text
    assert response.json() == {
        "error": {"message": response.json()["error"]["message"], "type": error_type, "param": param, "code": code}
    }


async def test_chat_completion(client, upstreams):
    fakes, _ = upstreams
    response = await client.post(CHAT, json={**HELLO, "user": "alice"})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == ROUTED_MODEL
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": reply_for(ROUTED_MODEL), "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    reply_tokens = len(reply_for(ROUTED_MODEL))
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": reply_tokens, "total_tokens": 2 + reply_tokens}
    assert response.headers["x-request-id"] == body["id"]
    assert response.headers["x-llmesh-model"] == ROUTED_MODEL
    assert response.headers["x-llmesh-route-reason"] == ROUTE_REASON
    # One RequestContext, built once, reached every service.
    for service in ("preprocess", "router", "inference", "postprocess"):
        context = fakes.requests[service][-1].context
        assert (context.request_id, context.tenant_id, context.user_id) == (body["id"], "default", "alice")
    # The gateway's default max_tokens was filled in.
    assert fakes.requests["inference"][-1].sampling.max_tokens == 128


async def test_requested_model_and_max_tokens(client):
    response = await client.post(CHAT, json={**HELLO, "model": "smollm2-135m-instruct", "max_tokens": 5})
    body = response.json()
    assert body["model"] == "smollm2-135m-instruct" == response.headers["x-llmesh-model"]
    assert body["choices"][0]["message"]["content"] == reply_for("smollm2-135m-instruct")[:5]
    assert body["choices"][0]["finish_reason"] == "length"


async def test_chat_stream_chunk_sequence(client):
    request = {**HELLO, "stream": True, "stream_options": {"include_usage": True}}
    response = await client.post(CHAT, json=request)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-llmesh-model"] == ROUTED_MODEL
    events = _sse(response.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert {chunk["id"] for chunk in chunks} == {response.headers["x-request-id"]}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [chunk["choices"][0]["delta"]["content"] for chunk in chunks[1:-2]]
    assert len(content) > 1 and "".join(content) == reply_for(ROUTED_MODEL)
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == len(reply_for(ROUTED_MODEL))


async def test_completions(client):
    response = await client.post("/v1/completions", json={"prompt": "Once upon", "max_tokens": 4})
    body = response.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["choices"] == [{"text": "Hell", "index": 0, "logprobs": None, "finish_reason": "length"}]

    response = await client.post("/v1/completions", json={"prompt": "Once upon", "stream": True})
    events = _sse(response.text)
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == reply_for(ROUTED_MODEL)
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


async def test_models_list(client):
    body = (await client.get("/v1/models")).json()
    assert body["object"] == "list"
    assert [model["id"] for model in body["data"]] == [
        "smollm2-student",
        "smollm2-135m-instruct",
        "llmesh-small",
        "all-minilm-l6-v2",
        "auto",
    ]
    assert {model["object"] for model in body["data"]} == {"model"}
    by_id = {model["id"]: model for model in body["data"]}
    smol = by_id["smollm2-135m-instruct"]
    assert (smol["owned_by"], smol["kind"], smol["context_length"]) == ("llmesh", "chat", 2048)
    assert smol["pricing"] == {"input_per_1k_tokens": 0.001, "output_per_1k_tokens": 0.002}
    assert by_id["all-minilm-l6-v2"]["kind"] == "embedding" and by_id["all-minilm-l6-v2"]["dimensions"] == 384
    assert by_id["auto"]["kind"] == "router" and "pricing" not in by_id["auto"]


async def test_model_retrieve(client):
    response = await client.get("/v1/models/smollm2-135m-instruct")
    assert response.status_code == 200 and response.json()["context_length"] == 2048
    missing = await client.get("/v1/models/no-such-model")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


async def test_blocked_prompt_is_a_refusal_not_an_error(client, upstreams):
    fakes, _ = upstreams
    calls = len(fakes.requests["inference"])
    response = await client.post(CHAT, json={"messages": [{"role": "user", "content": f"say {BLOCKED_WORD}"}]})
    assert response.status_code == 200
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "content_filter"
    assert choice["message"]["refusal"] == BLOCKED_MESSAGE
    assert len(fakes.requests["inference"]) == calls

    response = await client.post(CHAT, json={"messages": [{"role": "user", "content": BLOCKED_WORD}], "stream": True})
    events = _sse(response.text)
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"][0]["finish_reason"] == "content_filter"
    assert events[-2]["choices"][0]["delta"] == {"refusal": BLOCKED_MESSAGE}


async def test_a_prompt_above_the_perplexity_limit_is_refused_as_injection(upstreams):
    fakes, addr = upstreams
    # The fake router measures every prompt at perplexity 12.5.
    for limit, refused in ((10.0, True), (20.0, False)):
        calls = len(fakes.requests["inference"])
        pipeline, client = await _client(gateway_settings(addr, injection_max_perplexity=limit))
        async with client:
            response = await client.post(CHAT, json={"messages": [{"role": "user", "content": "aGVsbG8gd29ybGQ="}]})
        await pipeline.close()
        choice = response.json()["choices"][0]
        assert response.status_code == 200
        assert (choice["finish_reason"] == "content_filter") is refused
        assert len(fakes.requests["inference"]) == calls + (0 if refused else 1)


async def test_malformed_json_is_400(client):
    response = await client.post(CHAT, content=b'{"messages": [', headers={"content-type": "application/json"})
    _assert_openai_error(response, 400, "invalid_request_error")


async def test_bad_temperature_is_400_with_param(client):
    response = await client.post(CHAT, json={**HELLO, "temperature": 3})
    _assert_openai_error(response, 400, "invalid_request_error", param="temperature")
    response = await client.post("/v1/completions", json={"prompt": "x", "n": 9})
    _assert_openai_error(response, 400, "invalid_request_error", param="n")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ('{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages[0].content"),
        ('{"messages": [{"role": "user", "content": [{"type": "text", "text": "a\\udfffb"}]}]}', "messages[0].content"),
        ('{"messages": [{"role": "user", "content": "hi", "name": "\\udc00"}]}', "messages[0].name"),
        ('{"messages": [{"role": "user", "content": "hi"}], "stop": ["\\ud83d"]}', "stop"),
        ('{"messages": [{"role": "user", "content": "hi"}], "model": "\\ud800"}', "model"),
        ('{"messages": [{"role": "user", "content": "hi"}], "user": "\\ud800"}', "user"),
    ],
)
async def test_lone_surrogates_are_400(client, caplog, body, param):
    response = await client.post(CHAT, content=body.encode(), headers={"content-type": "application/json"})
    _assert_openai_error(response, 400, "invalid_request_error", param=param)
    assert "surrogate" in response.json()["error"]["message"]
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


async def test_lone_surrogate_in_a_completion_prompt_is_400(client):
    body = b'{"prompt": "x\\ud800"}'
    response = await client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    _assert_openai_error(response, 400, "invalid_request_error", param="prompt")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("stream", "yes"),
        ("stream", 1),
        ("max_tokens", "5"),
        ("max_tokens", 5.0),
        ("max_completion_tokens", "5"),
        ("temperature", True),
        ("temperature", "0.5"),
        ("top_p", "1"),
        ("seed", "42"),
        ("n", "1"),
        ("stream_options", {"include_usage": "true"}),
    ],
)
async def test_wrong_types_are_400_not_coerced(client, field, value):
    response = await client.post(CHAT, json={**HELLO, field: value})
    expected = {"stream_options": "stream_options.include_usage"}
    _assert_openai_error(response, 400, "invalid_request_error", param=expected.get(field, field))


async def test_wrong_message_types_are_400(client):
    response = await client.post(CHAT, json={"messages": [{"role": "user", "content": 5}]})
    _assert_openai_error(response, 400, "invalid_request_error", param="messages[0].content")
    response = await client.post(CHAT, json={"messages": [{"role": "user", "content": "hi", "name": 7}]})
    _assert_openai_error(response, 400, "invalid_request_error", param="messages[0].name")


async def test_integer_temperature_is_still_a_number(client):
    response = await client.post(CHAT, json={**HELLO, "temperature": 1})
    assert response.status_code == 200, response.text


async def test_unknown_model_is_404(client):
    response = await client.post(CHAT, json={**HELLO, "model": "gpt-4o"})
    _assert_openai_error(response, 404, "invalid_request_error", param="model", code="model_not_found")
    assert "gpt-4o" in response.json()["error"]["message"]
    response = await client.post(CHAT, json={**HELLO, "model": "gpt-4o", "stream": True})
    _assert_openai_error(response, 404, "invalid_request_error", param="model", code="model_not_found")


async def test_unknown_route_is_an_openai_error(client):
    _assert_openai_error(await client.get("/v1/nothing"), 404, "invalid_request_error")


async def test_oversize_body_by_content_length_is_413(client):
    response = await client.post(CHAT, json={"messages": [{"role": "user", "content": "x" * MAX_BODY}]})
    _assert_openai_error(response, 413, "invalid_request_error")


async def test_oversize_chunked_body_is_413_before_it_is_read(client):
    sent = 0

    async def body():
        nonlocal sent
        for _ in range(10):
            sent += 1
            yield b" " * 1000

    response = await client.post(CHAT, content=body(), headers={"content-type": "application/json"})
    _assert_openai_error(response, 413, "invalid_request_error")
    assert sent < 10


async def _raw_http(port: int, request: bytes, wait_s: float) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), wait_s)
    finally:
        writer.close()


async def test_body_shorter_than_content_length_is_408_not_a_hang(upstreams):
    """A real uvicorn server on a socket: the client declares 500 bytes, sends 20 and waits."""
    settings = gateway_settings(upstreams[1], body_read_timeout_s=0.5)
    pipeline = Pipeline(settings)
    port = free_port()
    server = RestServer(
        uvicorn.Config(create_app(settings, pipeline), host="127.0.0.1", port=port, log_level="warning")
    )
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.05)
        head = f"POST {CHAT} HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n"
        answer = await _raw_http(port, head.encode() + b'{"messages": [{"rol', wait_s=5)
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line.split()[1] == b"408", answer
        headers, _, body = rest.partition(b"\r\n\r\n")
        assert b"connection: close" in headers.lower()
        assert json.loads(body)["error"]["type"] == "invalid_request_error"
        # A complete body on a new connection is still answered.
        body = json.dumps(HELLO).encode()
        head = f"POST {CHAT} HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
        answer = await _raw_http(port, head.encode() + body, wait_s=5)
        assert answer.split()[1] == b"200", answer
    finally:
        server.should_exit = True
        await serving
        await pipeline.close()


async def test_a_unary_request_whose_client_leaves_is_cancelled_upstream(upstreams):
    """A real uvicorn server: the client gives up on a slow unary answer and closes the
    connection; the gateway cancels the request, down to the generation it was waiting for."""
    fakes, addr = upstreams
    settings = gateway_settings(addr)
    pipeline = Pipeline(settings)
    port = free_port()
    server = RestServer(
        uvicorn.Config(create_app(settings, pipeline), host="127.0.0.1", port=port, log_level="warning")
    )
    serving = asyncio.create_task(server.serve())
    fakes.generate_delay_s = 3.0
    try:
        while not server.started:
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.post(CHAT, json=HELLO, timeout=httpx.Timeout(5.0, read=0.5))
        # Well before the 3 s generation would have ended, nothing is generating any more.
        for _ in range(40):
            if fakes.generating == 0:
                break
            await asyncio.sleep(0.05)
        assert fakes.generating == 0
    finally:
        fakes.generate_delay_s = 0.0
        server.should_exit = True
        await serving
        await pipeline.close()


async def test_mid_stream_failure_is_an_error_event(client):
    request = {"messages": [{"role": "user", "content": FAIL_MID_STREAM}], "stream": True}
    response = await client.post(CHAT, json=request)
    assert response.status_code == 200
    events = _sse(response.text)
    assert "[DONE]" not in events
    assert events[1]["choices"][0]["delta"]["content"]  # text released before the failure
    assert events[-1]["error"]["type"] == "server_error"
    # The inference error is reported, not the postprocess call it cut short.
    assert events[-1]["error"]["code"] == "model_failed" and "inference" in events[-1]["error"]["message"]


async def _stream_pausing(upstreams, pauses: list[float], **settings) -> tuple[httpx.Response, float]:
    """A streamed chat through a gateway of ``settings`` whose inference stream waits
    ``pauses`` seconds before its chunks; the response, and how long it took."""
    fakes, addr = upstreams
    pipeline, client = await _client(gateway_settings(addr, **settings))
    fakes.stream_pauses_s = pauses
    try:
        async with client:
            started = asyncio.get_running_loop().time()
            response = await client.post(CHAT, json={**HELLO, "stream": True})
            return response, asyncio.get_running_loop().time() - started
    finally:
        fakes.stream_pauses_s = []
        await pipeline.close()


async def test_a_stream_outlasts_the_unary_deadline(upstreams):
    """Streaming calls have their own, longer deadline: a stream of 6 chunks 0.3 s apart
    (1.8 s) is not cut at the 0.5 s every unary call gets."""
    response, took = await _stream_pausing(
        upstreams, [0.3] * 6, default_deadline_s=0.5, stream_deadline_s=20.0, stream_idle_timeout_s=5.0
    )
    events = _sse(response.text)
    assert events[-1] == "[DONE]", events[-1]
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == reply_for(ROUTED_MODEL)
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert took >= 1.8


@pytest.mark.parametrize("stream", [False, True])
async def test_a_request_has_one_deadline_that_its_hops_share(upstreams, stream):
    """The REST edge sets one deadline for the whole request (the unary default, or the stream
    deadline for a stream) and every hop gets what is left of it: after a preprocess that took
    0.6 s, the inference call has at most the deadline less 0.6 s (before, each hop had a whole
    default deadline from its own start)."""
    fakes, addr = upstreams
    deadline = {"stream_deadline_s": 4.0} if stream else {"default_deadline_s": 4.0}
    pipeline, client = await _client(gateway_settings(addr, **deadline))
    fakes.preprocess_delay_s = 0.6
    fakes.time_remaining.clear()
    try:
        async with client:
            response = await client.post(CHAT, json={**HELLO, "stream": stream})
        assert response.status_code == 200
    finally:
        fakes.preprocess_delay_s = 0.0
        await pipeline.close()
    (preprocess,), (inference,) = fakes.time_remaining["preprocess"], fakes.time_remaining["inference"]
    assert preprocess is not None and 3.0 < preprocess <= 4.0
    assert inference is not None and inference <= 4.0 - 0.6


async def test_a_request_s_deadline_counts_its_wait_for_admission(upstreams):
    """The deadline counts from the request's arrival: a request that waited 0.8 s at the edge
    for the one slot (another request held it) reaches preprocess with at most the deadline
    less that wait."""
    fakes, addr = upstreams
    pipeline, client = await _client(gateway_settings(addr, default_deadline_s=4.0, max_concurrent_requests=1))
    fakes.generate_delay_s = 0.8
    fakes.time_remaining.clear()
    try:
        async with client:
            first = asyncio.create_task(client.post(CHAT, json=HELLO))
            while not fakes.generating:
                await asyncio.sleep(0.01)
            second = await client.post(CHAT, json=HELLO)
            assert (await first).status_code == 200 and second.status_code == 200
    finally:
        fakes.generate_delay_s = 0.0
        await pipeline.close()
    waited = fakes.time_remaining["preprocess"][-1]
    assert waited is not None and waited <= 4.0 - 0.6


@pytest.mark.parametrize(("pauses", "sent"), [([0.0, 5.0], "after the first chunk"), ([5.0], "before the first chunk")])
async def test_a_stalled_stream_ends_with_stream_stalled(upstreams, pauses, sent):
    """No chunk for the idle timeout ends the stream well within its deadline: an error event
    once something was sent, a 504 before; the stalled inference stream is cancelled."""
    fakes, _ = upstreams
    cancelled = fakes.cancelled_streams
    response, took = await _stream_pausing(upstreams, pauses, stream_deadline_s=20.0, stream_idle_timeout_s=0.5)
    assert took < 3.0
    if sent == "before the first chunk":
        _assert_openai_error(response, 504, "server_error", code="stream_stalled")
    else:
        assert response.status_code == 200
        events = _sse(response.text)
        assert "[DONE]" not in events
        assert events[1]["choices"][0]["delta"]["content"]  # the first chunk's text
        assert events[-1]["error"]["code"] == "stream_stalled" and "0.5 s" in events[-1]["error"]["message"]
    for _ in range(40):
        if fakes.cancelled_streams > cancelled:
            break
        await asyncio.sleep(0.05)
    assert fakes.cancelled_streams == cancelled + 1


async def test_upstream_down_is_503(upstreams, spans):
    for down in ("preprocess_addr", "inference_addr"):
        pipeline, client = await _client(gateway_settings(upstreams[1], **{down: unused_addr()}))
        async with client:
            for stream in (False, True):
                response = await client.post(CHAT, json={**HELLO, "stream": stream})
                _assert_openai_error(response, 503, "server_error", code="upstream_unavailable")
        await pipeline.close()


async def test_pipeline_span_is_a_child_of_the_rest_span(client, spans):
    spans.clear()
    response = await client.post(CHAT, json={**HELLO, "temperature": 0.5})
    finished = spans.get_finished_spans()
    chat = next(span for span in finished if span.name == semconv.SPAN_GATEWAY_CHAT)
    server = next(span for span in finished if span.kind == SpanKind.SERVER and span.name == f"POST {CHAT}")
    assert chat.parent.span_id == server.context.span_id
    assert response.headers["x-trace-id"] == format(chat.context.trace_id, "032x")
    # The upstream calls hang under the pipeline span.
    assert sum(1 for span in finished if span.parent and span.parent.span_id == chat.context.span_id) == 4
    attributes = chat.attributes
    assert attributes[semconv.GEN_AI_REQUEST_MODEL] == "auto"
    assert attributes[semconv.GEN_AI_RESPONSE_MODEL] == ROUTED_MODEL
    assert attributes[semconv.GEN_AI_REQUEST_TEMPERATURE] == 0.5
    assert attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] == 2
    assert attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == len(reply_for(ROUTED_MODEL))
    assert attributes[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)
    assert attributes[semconv.LLMESH_ROUTE_REASON] == ROUTE_REASON
    assert attributes[semconv.LLMESH_REQUEST_ID] == response.json()["id"]


async def test_streaming_span_covers_the_stream(client, spans):
    spans.clear()
    await client.post(CHAT, json={**HELLO, "stream": True})
    chat = next(span for span in spans.get_finished_spans() if span.name == semconv.SPAN_GATEWAY_CHAT)
    assert chat.attributes[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)
    assert chat.attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == len(reply_for(ROUTED_MODEL))


async def test_metrics(client):
    await client.post(CHAT, json={**HELLO, "stream": True})
    await client.post(CHAT, json={**HELLO, "temperature": 9})
    text = (await client.get("/metrics")).text
    assert f'{semconv.METRIC_GATEWAY_REQUESTS}{{route="{CHAT}",status="200"}}' in text
    assert f'{semconv.METRIC_GATEWAY_REQUESTS}{{route="{CHAT}",status="400"}}' in text
    assert f'{semconv.METRIC_GATEWAY_DURATION}_count{{route="{CHAT}",status="200"}}' in text
    assert f'{semconv.METRIC_GATEWAY_TTFT}_count{{model="{ROUTED_MODEL}"}}' in text


async def test_healthz(client):
    response = await client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


async def test_readyz_reports_each_dependency(client):
    # The module's settings point Redis at a closed port.
    response = await client.get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert {name: checks[name] for name in ("preprocess", "router", "inference", "postprocess")} == dict.fromkeys(
        ("preprocess", "router", "inference", "postprocess"), "SERVING"
    )
    assert checks["redis"] != "SERVING"


async def test_readyz_ready_with_redis(upstreams, redis_url):
    pipeline, client = await _client(gateway_settings(upstreams[1], redis_url=redis_url))
    async with client:
        response = await client.get("/readyz")
    await pipeline.close()
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ready"


async def test_readyz_says_which_model_is_still_loading(upstreams, redis_url):
    """A real inference service whose Triton has one model loaded and the other still loading."""
    from services.inference.service import InferenceService
    from services.inference.settings import InferenceSettings
    from support.fake_triton import FakeTriton, answer

    settings = InferenceSettings()
    triton = FakeTriton({"llmesh-small": answer(1)})  # smollm2-135m-instruct: not ready yet
    inference = await start_service(InferenceService(settings, triton), settings, "127.0.0.1:0")
    pipeline, client = await _client(
        gateway_settings(upstreams[1], redis_url=redis_url, inference_addr=f"127.0.0.1:{inference.port}")
    )
    try:
        async with client:
            for _ in range(50):
                response = await client.get("/readyz")
                if "model:smollm2-135m-instruct" in response.json()["checks"]:
                    break
                await asyncio.sleep(0.1)
    finally:
        await pipeline.close()
        await inference.stop(None)
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["inference"] == "NOT_SERVING"
    assert checks["model:smollm2-135m-instruct"] == "loading"
    assert checks["model:llmesh-small"] == "SERVING"
