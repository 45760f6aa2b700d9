"""`llmesh up --colocate` end to end: the services inside the gateway's process answer real
requests on the real model, one trace runs from the REST edge through the in-process calls
into Triton, and each service still serves its own gRPC address for every other caller."""

import time

import grpc
import httpx
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmesh.common.v1 import common_pb2
from llmesh.preprocess.v1 import preprocess_pb2, preprocess_pb2_grpc
from tools.stack import SERVICES, Ports, Stack

pytestmark = pytest.mark.e2e

SMOL = "smollm2-135m-instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def colocated(tmp_path_factory, triton, otlp_sink):
    stack = Stack(
        ports=Ports.free(),
        run_dir=tmp_path_factory.mktemp("colocated"),
        tls=True,
        external_triton=triton,
        colocate=True,
        extra_env={"LLMESH_BREAKER_SLOW_TTFT_S": "60"},
    )
    forwarded = otlp_sink.forward_to
    # Triton's spans reach this stack's collector for as long as the module runs.
    otlp_sink.forward_to = f"http://127.0.0.1:{stack.ports.collector}/v1/traces"
    with stack as running:
        yield running
    otlp_sink.forward_to = forwarded


@pytest.fixture(scope="module")
def client(colocated):
    key = colocated.create_key("colocated", name="e2e co-located")
    return openai.OpenAI(base_url=f"{colocated.gateway_url}/v1", api_key=key, max_retries=0)


def test_no_service_runs_as_a_process_of_its_own(colocated):
    names = {child.name for child in colocated.children}
    assert "gateway" in names and not names & set(SERVICES)
    gateway = next(child for child in colocated.children if child.name == "gateway")
    assert gateway.argv[-1] == "cli.colocated"


def test_the_real_model_answers_unary_and_streamed(client):
    answer = client.chat.completions.create(model=SMOL, messages=FRANCE, max_tokens=16, temperature=0)
    assert "Paris" in answer.choices[0].message.content
    streamed = client.chat.completions.create(model=SMOL, messages=FRANCE, max_tokens=16, temperature=0, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
    assert text == answer.choices[0].message.content


def test_errors_are_the_same_openai_errors(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=FRANCE)
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=SMOL, messages=FRANCE, max_tokens=100_000)
    assert caught.value.param == "max_tokens" and "context 2048" in caught.value.message


IN_PROCESS_CALLS = {
    "llmesh.preprocess.v1.PreprocessService/Preprocess",
    "llmesh.router.v1.RouterService/Route",
    "llmesh.inference.v1.InferenceService/Generate",
    "llmesh.postprocess.v1.PostprocessService/Postprocess",
}


def _traced(colocated, client) -> tuple[str, list[dict]]:
    """One request and its trace's spans, once the in-process calls and Triton's compute step
    are in (the gateway and Triton export in batches of their own), or after 20 s."""
    response = client.chat.completions.with_raw_response.create(model=SMOL, messages=FRANCE, max_tokens=4)
    trace_id = response.headers["x-trace-id"]
    collector = f"http://127.0.0.1:{colocated.ports.collector}/v1/traces/{trace_id}"
    deadline = time.monotonic() + 20
    while True:
        spans = httpx.get(collector, timeout=5).json()["spans"]
        if _complete(spans) or time.monotonic() > deadline:
            return trace_id, spans
        time.sleep(0.5)


def _local_calls(spans: list[dict]) -> set[str]:
    return {s["name"] for s in spans if s["attributes"].get("rpc.system") == "local"}


def _complete(spans: list[dict]) -> bool:
    computed = any(s["service"] == "triton" and s["name"] == "compute" for s in spans)
    return computed and _local_calls(spans) >= IN_PROCESS_CALLS


def test_one_trace_runs_through_the_in_process_calls_into_triton(colocated, client):
    # Up to three requests: tritonserver 2.51 now and then starts a new root trace for a request
    # that carried a valid traceparent (see tests/e2e/test_stack.py).
    for _ in range(3):
        trace_id, spans = _traced(colocated, client)
        assert {s["trace_id"] for s in spans} == {trace_id}
        if _complete(spans):
            break
    assert _local_calls(spans) >= IN_PROCESS_CALLS, sorted(_local_calls(spans))
    assert _complete(spans), [(s["service"], s["name"]) for s in spans]
    # Every span but Triton's comes from the one process.
    assert {s["service"] for s in spans} == {"gateway", "triton"}


def test_each_service_still_serves_its_address_over_mutual_tls(colocated):
    credentials = colocated._probe_credentials()
    for name in SERVICES:
        channel = grpc.secure_channel(f"127.0.0.1:{getattr(colocated.ports, name)}", credentials)
        with channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING, name
    with grpc.secure_channel(f"127.0.0.1:{colocated.ports.preprocess}", credentials) as channel:
        prepared = preprocess_pb2_grpc.PreprocessServiceStub(channel).Preprocess(
            preprocess_pb2.PreprocessRequest(
                messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi")]
            ),
            timeout=10,
        )
    assert prepared.prompts and not prepared.verdict.blocked
