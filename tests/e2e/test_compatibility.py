"""The README's compatibility table is what the real stack answers: one request per row, on
each edge the row names; a supported parameter is answered, a refused one is a 400 (gRPC
INVALID_ARGUMENT) that names it."""

import json
import re

import grpc
import httpx
import pytest

from llmesh.common.v1 import common_pb2
from llmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from mesh.errors import error_info
from mesh.settings import REPO_ROOT

pytestmark = pytest.mark.e2e

SMOL, SMALL = "smollm2-135m-instruct", "llmesh-small"
ASK = [{"role": "user", "content": "Name a colour."}]
TOOL = {
    "type": "function",
    "function": {
        "name": "pick",
        "description": "Pick a colour",
        "parameters": {"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]},
    },
}
CHAT = {"model": SMALL, "messages": ASK, "max_tokens": 2}
TOOLS = {"model": SMOL, "messages": ASK, "max_tokens": 40, "tools": [TOOL]}
COMPLETION = {"model": SMALL, "prompt": "The", "max_tokens": 2}
RESPONSE = {"model": SMALL, "input": "Name a colour.", "max_output_tokens": 2}
MESSAGE = {"model": SMALL, "messages": ASK, "max_tokens": 2}

# (endpoint, parameter) -> (path, request body with the parameter set).
REST = {
    ("chat", "logprobs"): ("/v1/chat/completions", {**CHAT, "logprobs": True}),
    ("chat", "top_logprobs"): ("/v1/chat/completions", {**CHAT, "logprobs": True, "top_logprobs": 2}),
    ("chat", "n"): ("/v1/chat/completions", {**CHAT, "n": 2, "temperature": 1}),
    ("chat", "response_format"): ("/v1/chat/completions", {**CHAT, "response_format": {"type": "json_object"}}),
    ("chat", "tools"): ("/v1/chat/completions", TOOLS),
    ("chat", "tool_choice"): ("/v1/chat/completions", {**TOOLS, "tool_choice": "required"}),
    ("chat", "functions"): ("/v1/chat/completions", {**TOOLS, "tools": None, "functions": [TOOL["function"]]}),
    ("chat", "function_call"): (
        "/v1/chat/completions",
        {**TOOLS, "tools": None, "functions": [TOOL["function"]], "function_call": {"name": "pick"}},
    ),
    ("chat", "parallel_tool_calls"): ("/v1/chat/completions", {**TOOLS, "parallel_tool_calls": False}),
    ("chat", "frequency_penalty"): ("/v1/chat/completions", {**CHAT, "frequency_penalty": 1.0}),
    ("chat", "presence_penalty"): ("/v1/chat/completions", {**CHAT, "presence_penalty": 1.0}),
    ("chat", "logit_bias"): ("/v1/chat/completions", {**CHAT, "logit_bias": {"5": -100}}),
    ("chat", "stop"): ("/v1/chat/completions", {**CHAT, "stop": ["a", "b", "c", "d"]}),
    ("chat", "max_completion_tokens"): (
        "/v1/chat/completions",
        {**CHAT, "max_tokens": None, "max_completion_tokens": 2},
    ),
    ("chat", "seed"): ("/v1/chat/completions", {**CHAT, "seed": 1}),
    ("chat", "stream_options"): (
        "/v1/chat/completions",
        {**CHAT, "stream": True, "stream_options": {"include_usage": True}},
    ),
    ("chat", "store"): ("/v1/chat/completions", {**CHAT, "store": True}),
    ("chat", "modalities"): ("/v1/chat/completions", {**CHAT, "modalities": ["text", "audio"]}),
    ("chat", "audio"): ("/v1/chat/completions", {**CHAT, "audio": {"voice": "alloy", "format": "wav"}}),
    ("chat", "prediction"): ("/v1/chat/completions", {**CHAT, "prediction": {"type": "content", "content": "x"}}),
    ("chat", "reasoning_effort"): ("/v1/chat/completions", {**CHAT, "reasoning_effort": "low"}),
    ("chat", "service_tier"): ("/v1/chat/completions", {**CHAT, "service_tier": "flex"}),
    ("chat", "web_search_options"): ("/v1/chat/completions", {**CHAT, "web_search_options": {}}),
    ("chat", "metadata"): ("/v1/chat/completions", {**CHAT, "metadata": {"a": "b"}}),
    ("completions", "logprobs"): ("/v1/completions", {**COMPLETION, "logprobs": 2}),
    ("completions", "n"): ("/v1/completions", {**COMPLETION, "n": 2, "temperature": 1}),
    ("completions", "best_of"): ("/v1/completions", {**COMPLETION, "best_of": 3}),
    ("completions", "echo"): ("/v1/completions", {**COMPLETION, "echo": True}),
    ("completions", "suffix"): ("/v1/completions", {**COMPLETION, "suffix": "end"}),
    ("completions", "frequency_penalty"): ("/v1/completions", {**COMPLETION, "frequency_penalty": 1.0}),
    ("completions", "logit_bias"): ("/v1/completions", {**COMPLETION, "logit_bias": {"5": -100}}),
    ("embeddings", "input"): ("/v1/embeddings", {"model": "all-minilm-l6-v2", "input": ["a", "b"]}),
    ("embeddings", "encoding_format"): (
        "/v1/embeddings",
        {"model": "all-minilm-l6-v2", "input": "a", "encoding_format": "base64"},
    ),
    ("embeddings", "dimensions"): ("/v1/embeddings", {"model": "all-minilm-l6-v2", "input": "a", "dimensions": 64}),
    ("moderations", "input"): ("/v1/moderations", {"input": ["a", "b"]}),
    ("moderations", "model"): ("/v1/moderations", {"input": "a", "model": "llmesh-guard"}),
    ("responses", "input"): ("/v1/responses", {**RESPONSE, "input": [{"role": "user", "content": "Hi"}]}),
    ("responses", "instructions"): ("/v1/responses", {**RESPONSE, "instructions": "Be brief."}),
    ("responses", "previous_response_id"): ("/v1/responses", None),  # needs a stored response: see below
    ("responses", "text"): ("/v1/responses", {**RESPONSE, "text": {"format": {"type": "json_object"}}}),
    ("responses", "stream"): ("/v1/responses", {**RESPONSE, "stream": True}),
    ("responses", "tools"): ("/v1/responses", {**RESPONSE, "tools": [{"type": "web_search"}]}),
    ("responses", "reasoning"): ("/v1/responses", {**RESPONSE, "reasoning": {"effort": "low"}}),
    ("messages", "system"): ("/v1/messages", {**MESSAGE, "system": "Be brief."}),
    ("messages", "stop_sequences"): ("/v1/messages", {**MESSAGE, "stop_sequences": ["x"]}),
    ("messages", "stream"): ("/v1/messages", {**MESSAGE, "stream": True}),
    ("messages", "top_k"): ("/v1/messages", {**MESSAGE, "top_k": 5}),
    ("messages", "tools"): ("/v1/messages", {**MESSAGE, "tools": [{"name": "t", "input_schema": {"type": "object"}}]}),
    ("messages", "thinking"): ("/v1/messages", {**MESSAGE, "thinking": {"type": "enabled", "budget_tokens": 1024}}),
    ("models", "retrieve"): ("/v1/models/llmesh-small", None),
}

_USER = [common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="Name a colour.")]


def _chat(**sampling) -> tuple[str, gateway_pb2.ChatRequest]:
    return "Chat", gateway_pb2.ChatRequest(
        model=SMALL, messages=_USER, sampling=common_pb2.SamplingParams(max_tokens=2, **sampling)
    )


def _tools(mode: int) -> tuple[str, gateway_pb2.ChatRequest]:
    tool = common_pb2.Tool(name="pick", parameters_json=json.dumps(TOOL["function"]["parameters"]))
    request = gateway_pb2.ChatRequest(
        model=SMOL,
        messages=_USER,
        sampling=common_pb2.SamplingParams(max_tokens=40),
        tools=[tool],
        tool_choice=common_pb2.ToolChoice(mode=mode),
    )
    return "Chat", request


GRPC = {
    ("chat", "logprobs"): lambda: _chat(logprobs=True),
    ("chat", "top_logprobs"): lambda: _chat(top_logprobs=2),
    ("chat", "n"): lambda: _chat(n=2, temperature=1),
    ("chat", "response_format"): lambda: _chat(structured_output=common_pb2.StructuredOutput(json_object=True)),
    ("chat", "tools"): lambda: _tools(common_pb2.TOOL_CHOICE_MODE_UNSPECIFIED),
    ("chat", "tool_choice"): lambda: _tools(common_pb2.TOOL_CHOICE_MODE_REQUIRED),
    ("chat", "frequency_penalty"): lambda: _chat(frequency_penalty=1.0),
    ("chat", "presence_penalty"): lambda: _chat(presence_penalty=1.0),
    ("chat", "logit_bias"): lambda: _chat(logit_bias={5: -100.0}),
    ("chat", "stop"): lambda: _chat(stop=["a", "b", "c", "d"]),
    ("chat", "max_completion_tokens"): lambda: _chat(),
    ("chat", "seed"): lambda: _chat(seed=1),
    ("embeddings", "input"): lambda: ("Embed", gateway_pb2.EmbedRequest(model="all-minilm-l6-v2", inputs=["a", "b"])),
    ("moderations", "input"): lambda: ("Moderate", gateway_pb2.ModerateRequest(inputs=["a", "b"])),
    ("models", "retrieve"): lambda: ("ListModels", gateway_pb2.ListModelsRequest()),
}


def _table() -> list[tuple[str, str, str, str]]:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- compatibility-table -->", 1)[1].split("<!-- end compatibility-table -->", 1)[0]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in block.strip().splitlines()[2:]]
    return [(row[0], row[1], row[2], row[3]) for row in rows]


ROWS = _table()


def test_every_row_has_its_request_and_every_request_its_row():
    assert {(endpoint, param) for endpoint, param, _, _ in ROWS} == set(REST)
    assert {(endpoint, param) for endpoint, param, _, grpc_edge in ROWS if grpc_edge != "—"} == set(GRPC)
    assert all(
        rest in ("supported", "refused") and grpc_edge in ("supported", "refused", "—") for *_, rest, grpc_edge in ROWS
    )


def _stored_response(base_url: str, headers: dict) -> str:
    response = httpx.post(f"{base_url}/v1/responses", json=RESPONSE, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["id"]


@pytest.mark.parametrize(("endpoint", "param", "rest", "grpc_edge"), ROWS, ids=[f"{r[0]}-{r[1]}" for r in ROWS])
def test_rest(base_url, headers, endpoint, param, rest, grpc_edge):
    path, body = REST[(endpoint, param)]
    if (endpoint, param) == ("responses", "previous_response_id"):
        body = {**RESPONSE, "previous_response_id": _stored_response(base_url, headers)}
    if body is None:
        response = httpx.get(f"{base_url}{path}", headers=headers, timeout=60)
    else:
        response = httpx.post(
            f"{base_url}{path}", json={k: v for k, v in body.items() if v is not None}, headers=headers, timeout=120
        )
    if rest == "supported":
        assert response.status_code == 200, response.text
        return
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    if endpoint == "messages":
        assert re.search(rf"\b{param}\b", error["message"]), error
    else:
        assert error["param"] == param, error


@pytest.mark.parametrize(
    ("endpoint", "param", "grpc_edge"),
    [(e, p, g) for e, p, _, g in ROWS if g != "—"],
    ids=[f"{e}-{p}" for e, p, _, g in ROWS if g != "—"],
)
def test_grpc(stack, api_key, endpoint, param, grpc_edge):
    method, request = GRPC[(endpoint, param)]()
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports.gateway_grpc}") as channel:
        call = getattr(gateway_pb2_grpc.GatewayServiceStub(channel), method)
        try:
            call(request, timeout=120, metadata=[("authorization", f"Bearer {api_key}")])
        except grpc.RpcError as error:
            assert grpc_edge == "refused", f"{error.code()}: {error.details()}"
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error_info(error).metadata["param"] == param
            return
    assert grpc_edge == "supported"
