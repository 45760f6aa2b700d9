"""End to end through the real stack: REST, SSE, the openai client, the gRPC edge, traces."""

import json
import time

import grpc
import httpx
import openai
import pytest

from llmesh.common.v1 import common_pb2
from llmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from mesh.catalog import default_models
from support.traces import service_edges

# An answer may come from any model the router or a failover picks.
SERVED_MODELS = {model.name for model in default_models()}

pytestmark = pytest.mark.e2e

QUESTION = [{"role": "user", "content": "What does json.dumps do?"}]
CHAT = {"model": "auto", "messages": QUESTION, "max_tokens": 24, "temperature": 0}
SMOL = "smollm2-135m-instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def _sse_events(response: httpx.Response) -> list[str]:
    return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]


def test_chat_completion(base_url, headers):
    response = httpx.post(f"{base_url}/v1/chat/completions", json=CHAT, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    choice = body["choices"][0]
    assert body["object"] == "chat.completion"
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    assert body["model"] in SERVED_MODELS
    assert body["usage"]["prompt_tokens"] > 0 and 0 < body["usage"]["completion_tokens"] <= 24
    assert response.headers["x-llmesh-model"] == body["model"]
    assert response.headers["x-llmesh-route-reason"]


def test_greedy_generation_is_deterministic(base_url, headers):
    first, second = (
        httpx.post(
            f"{base_url}/v1/chat/completions", json={**CHAT, "model": "llmesh-small"}, headers=headers, timeout=60
        ).json()
        for _ in range(2)
    )
    assert first["choices"][0]["message"]["content"] == second["choices"][0]["message"]["content"]


def test_chat_completion_stream_is_openai_sse(base_url, headers):
    with httpx.stream(
        "POST", f"{base_url}/v1/chat/completions", json={**CHAT, "stream": True}, headers=headers, timeout=60
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"])
    assert text.strip(), "the stream carried no generated text"
    finish = [chunk["choices"][0]["finish_reason"] for chunk in chunks if chunk["choices"]]
    assert finish[-1] in ("stop", "length") and all(f is None for f in finish[:-1])


def test_streamed_and_unary_text_agree(base_url, headers):
    """Streaming goes through Triton's decoupled stream and postprocess's bidi stream; with
    greedy decoding it must give the same text as the unary path, so no chunk was lost."""
    request = {**CHAT, "model": "smollm2-135m-instruct"}
    unary = httpx.post(f"{base_url}/v1/chat/completions", json=request, headers=headers, timeout=60).json()
    url = f"{base_url}/v1/chat/completions"
    with httpx.stream("POST", url, json={**request, "stream": True}, headers=headers, timeout=60) as r:
        chunks = [json.loads(e) for e in _sse_events(r)[:-1]]
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert streamed == unary["choices"][0]["message"]["content"]


def test_the_real_model_knows_the_capital_of_france(base_url, api_key):
    """Over REST with the official openai client, unary and streamed, through every hop."""
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=api_key)
    completion = client.chat.completions.create(model=SMOL, messages=FRANCE, max_tokens=32, temperature=0)
    assert "Paris" in completion.choices[0].message.content
    assert completion.model == SMOL and completion.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(model=SMOL, messages=FRANCE, max_tokens=32, temperature=0, stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert streamed == completion.choices[0].message.content


def test_a_prompt_and_max_tokens_beyond_the_context_is_a_400_naming_the_limit(base_url, api_key):
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=SMOL, messages=FRANCE, max_tokens=4000)
    assert raised.value.body["param"] == "max_tokens" and "context 2048" in raised.value.body["message"]
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="llmesh-small", messages=[{"role": "user", "content": "word " * 400}])
    assert raised.value.body["param"] == "messages" and "256" in raised.value.body["message"]
    # Two dozen such requests leave the model healthy for everyone.
    for _ in range(12):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=SMOL, messages=FRANCE, max_tokens=4_294_967_295)
    assert (
        "Paris"
        in client.chat.completions.create(model=SMOL, messages=FRANCE, max_tokens=32, temperature=0)
        .choices[0]
        .message.content
    )


def test_openai_client_unmodified(base_url, api_key):
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=api_key)
    completion = client.chat.completions.create(model="auto", messages=QUESTION, max_tokens=16, temperature=0)
    assert completion.choices[0].message.content
    assert completion.usage.completion_tokens > 0

    stream = client.chat.completions.create(
        model="llmesh-small", messages=QUESTION, max_tokens=16, temperature=0, stream=True
    )
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert "".join(pieces).strip()

    models = {model.id for model in client.models.list()}
    assert {"llmesh-small", "smollm2-135m-instruct", "auto"} <= models


def test_openai_client_sees_typed_errors(base_url, api_key):
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="auto", messages=QUESTION, temperature=7)


def test_completions_endpoint(base_url, headers):
    response = httpx.post(
        f"{base_url}/v1/completions",
        json={"model": "llmesh-small", "prompt": "Return the absolute value", "max_tokens": 12, "temperature": 0},
        headers=headers,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"]


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"{not json", 400, None),
        (json.dumps({**CHAT, "model": "nope"}).encode(), 404, "model_not_found"),
        (json.dumps({**CHAT, "temperature": 3}).encode(), 400, None),
        (json.dumps({"model": "auto"}).encode(), 400, None),
    ],
)
def test_bad_input_gets_openai_error(base_url, headers, content, status, code):
    response = httpx.post(
        f"{base_url}/v1/chat/completions",
        content=content,
        headers={**headers, "content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert error["message"] and error["type"]
    if code:
        assert error["code"] == code


def test_oversize_body_is_refused(base_url, headers):
    huge = json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * (4 * 1024 * 1024)}]})
    response = httpx.post(f"{base_url}/v1/chat/completions", content=huge, headers=headers, timeout=30)
    assert response.status_code == 413
    assert response.json()["error"]["message"]


def test_grpc_edge(stack, api_key):
    request = dict(
        model="llmesh-small",
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="What does json.dumps do?")],
        sampling=common_pb2.SamplingParams(max_tokens=16, temperature=0),
    )
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports.gateway_grpc}") as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        metadata = [("authorization", f"Bearer {api_key}")]
        reply = stub.Chat(gateway_pb2.ChatRequest(**request), timeout=60, metadata=metadata)
        assert reply.text and reply.model == "llmesh-small" and reply.usage.completion_tokens > 0
        deltas = list(stub.ChatStream(gateway_pb2.ChatStreamRequest(**request), timeout=60, metadata=metadata))
    assert "".join(d.text_delta for d in deltas) == reply.text
    assert deltas[-1].finish_reason in (common_pb2.FINISH_REASON_STOP, common_pb2.FINISH_REASON_LENGTH)

    with (
        grpc.insecure_channel(f"127.0.0.1:{stack.ports.gateway_grpc}") as channel,
        pytest.raises(grpc.RpcError) as raised,
    ):
        gateway_pb2_grpc.GatewayServiceStub(channel).Chat(
            gateway_pb2.ChatRequest(**{**request, "model": "nope"}), timeout=30, metadata=metadata
        )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_grpc_edge_real_answer(stack, api_key):
    request = gateway_pb2.ChatStreamRequest(
        model=SMOL,
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=FRANCE[0]["content"])],
        sampling=common_pb2.SamplingParams(max_tokens=32, temperature=0),
    )
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports.gateway_grpc}") as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        deltas = list(stub.ChatStream(request, timeout=60, metadata=[("authorization", f"Bearer {api_key}")]))
    assert "Paris" in "".join(d.text_delta for d in deltas)
    assert deltas[-1].model == SMOL and deltas[-1].usage.completion_tokens > 0


EXPECTED_EDGES = {
    ("gateway", "preprocess"),
    ("gateway", "router"),
    # The router scores the prompt through the inference service (InferenceService.Score).
    ("router", "inference"),
    ("gateway", "inference"),
    ("inference", "triton"),
    ("gateway", "postprocess"),
}


def _traced_request(stack, base_url: str, headers: dict, stream: bool) -> tuple[str, list[dict]]:
    """One request and the spans of its trace, once every expected edge is in (or 15 s passed)."""
    response = httpx.post(
        f"{base_url}/v1/chat/completions", json={**CHAT, "stream": stream}, headers=headers, timeout=60
    )
    assert response.status_code == 200
    trace_id = response.headers["x-trace-id"]
    collector = f"http://127.0.0.1:{stack.ports.collector}/v1/traces/{trace_id}"
    # Triton exports its spans in batches; allow for a loaded machine.
    deadline = time.monotonic() + 15
    while True:
        spans = httpx.get(collector, timeout=5).json()["spans"]
        if service_edges(spans) >= EXPECTED_EDGES or time.monotonic() > deadline:
            return trace_id, spans
        time.sleep(0.5)


@pytest.mark.parametrize("stream", [False, True])
def test_one_request_is_one_trace_across_every_hop(stack, base_url, headers, stream):
    # Works around tritonserver 2.51 (the nvidia-pytriton wheel): now and then (about 1 request
    # in 10 under the e2e suite's load) it starts a new root trace for a request that carried a
    # valid traceparent, for unary and streaming calls alike. One request in three attempts must
    # give the whole trace; every attempt's spans stay in the caller's trace id.
    for _ in range(3):
        trace_id, spans = _traced_request(stack, base_url, headers, stream)
        assert {s["trace_id"] for s in spans} == {trace_id}
        edges = service_edges(spans)
        if edges >= EXPECTED_EDGES:
            break
    assert edges >= EXPECTED_EDGES, (
        f"missing edges {EXPECTED_EDGES - edges}; spans: {[(s['service'], s['name']) for s in spans]}"
    )
    # Triton's own compute step is inside the same trace.
    assert any(s["service"] == "triton" and s["name"] == "compute" for s in spans)
