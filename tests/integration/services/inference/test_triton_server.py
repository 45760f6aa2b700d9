"""The real tritonserver from the nvidia-pytriton wheel with our model repository: vLLM's engine
inside the python backend, for both served models. Raw tritonclient calls, the tensor contract of
docs/ARCHITECTURE.md, no llmesh code in between."""

from __future__ import annotations

import json
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tritonclient_grpc
from transformers import AutoModelForCausalLM, AutoTokenizer
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from mesh import semconv
from mesh.catalog import default_models, find_model

SMOL, SMALL = "smollm2-135m-instruct", "llmesh-small"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def tokenizers():
    return {m.name: AutoTokenizer.from_pretrained(m.resolved_dir()) for m in default_models()}


def chat_ids(tokenizer, messages=QUESTION) -> list[int]:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]


def _input(name: str, arr: np.ndarray):
    tensor = tritonclient_grpc.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
    tensor.set_data_from_numpy(arr)
    return tensor


def inputs(ids, params) -> list:
    encoded = np.frombuffer(json.dumps(params).encode(), dtype=np.uint8)
    return [_input("input_ids", np.asarray(ids, dtype=np.int64)), _input("parameters", encoded)]


def stream(url, model, ids, params, *, timeout=120.0, headers=None, cancel_after=None):
    """One streamed request; the raw InferResult of every response until each answer finished
    (or, with ``cancel_after``, until that many responses arrived and the stream was cancelled)."""
    client = tritonclient_grpc.InferenceServerClient(url)
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)), headers=headers)
    answers, finished, out = params.get("n", 1), set(), []
    try:
        client.async_stream_infer(model, inputs(ids, params))
        while len(finished) < answers:
            result, error = responses.get(timeout=timeout)
            if error is not None:
                raise error
            out.append(result)
            if result.as_numpy("finish_reason").tobytes():
                finished.add(int(result.as_numpy("index")[0]))
            if cancel_after is not None and len(out) >= cancel_after:
                client.stop_stream(cancel_requests=True)
                return out
        return out
    finally:
        client.stop_stream()
        client.close()


def tokens_of(results, index=0) -> list[int]:
    return [int(t) for r in results if r.as_numpy("index")[0] == index for t in r.as_numpy("token_ids")]


def finish_of(results, index=0) -> str:
    return next(
        r.as_numpy("finish_reason").tobytes().decode() for r in reversed(results) if r.as_numpy("index")[0] == index
    )


def metric(triton, name: str, model: str) -> float:
    for line in httpx.get(f"http://127.0.0.1:{triton.metrics_port}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + "{") and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} for {model} not on Triton's /metrics")


def test_the_real_model_answers_the_capital_of_france(triton, tokenizers):
    results = stream(triton.grpc_url, SMOL, chat_ids(tokenizers[SMOL]), {"max_tokens": 32, "temperature": 0})
    answer = tokenizers[SMOL].decode(tokens_of(results), skip_special_tokens=True)
    assert "Paris" in answer
    assert finish_of(results) == "stop"


@pytest.mark.parametrize("model", [SMOL, SMALL])
def test_stream_carries_real_tensor_bytes(triton, tokenizers, model):
    ids = chat_ids(tokenizers[model])
    results = stream(triton.grpc_url, model, ids, {"max_tokens": 12, "temperature": 0, "logprobs": 3})
    vocab = len(tokenizers[model])
    sizes = {"token_ids": 8, "token_logprobs": 4, "top_token_ids": 8, "top_logprobs": 4, "index": 4, "usage": 8}
    for result in results:
        raw = result.get_response()
        # A stub that sends tensors through numpy 2 sends them with no bytes at all.
        contents = dict(zip([o.name for o in raw.outputs], raw.raw_output_contents, strict=True))
        token_ids = result.as_numpy("token_ids")
        for name, width in sizes.items():
            assert len(contents[name]) == width * result.as_numpy(name).size, name
        assert result.as_numpy("top_token_ids").size == 3 * token_ids.size
        assert ((token_ids >= 0) & (token_ids < vocab)).all()
        logprobs = result.as_numpy("token_logprobs")
        assert np.isfinite(logprobs).all() and (logprobs <= 0).all()
    prompt_tokens, completion_tokens, _ = results[-1].as_numpy("usage").tolist()
    assert prompt_tokens == len(ids)
    assert completion_tokens == len(tokens_of(results)) <= 12
    assert finish_of(results) in ("stop", "length")


def test_top_logprobs_are_ranked_and_contain_the_greedy_choice(triton, tokenizers):
    results = stream(
        triton.grpc_url, SMOL, chat_ids(tokenizers[SMOL]), {"max_tokens": 6, "temperature": 0, "logprobs": 4}
    )
    for result in results:
        chosen = result.as_numpy("token_ids")
        own = result.as_numpy("token_logprobs")
        top_ids = result.as_numpy("top_token_ids").reshape(len(chosen), 4)
        top = result.as_numpy("top_logprobs").reshape(len(chosen), 4)
        assert (np.diff(top, axis=1) <= 1e-6).all()
        # Greedy: the chosen token is the most likely one, with its own log-prob.
        assert (top_ids[:, 0] == chosen).all()
        np.testing.assert_allclose(top[:, 0], own, rtol=1e-5)


def test_greedy_is_deterministic_and_max_tokens_is_honoured(triton, tokenizers):
    ids = chat_ids(tokenizers[SMOL], [{"role": "user", "content": "Write a long story about a dragon."}])
    params = {"max_tokens": 9, "temperature": 0, "ignore_eos": True}
    first, second = (stream(triton.grpc_url, SMOL, ids, params) for _ in range(2))
    assert tokens_of(first) == tokens_of(second)
    assert len(tokens_of(first)) == 9 and finish_of(first) == "length"


def test_seeded_sampling_is_reproducible_and_seeds_differ(triton, tokenizers):
    ids = chat_ids(tokenizers[SMOL], [{"role": "user", "content": "Name a colour."}])
    runs = {
        seed: [
            tokens_of(stream(triton.grpc_url, SMOL, ids, {"max_tokens": 16, "temperature": 1.0, "seed": seed}))
            for _ in range(2)
        ]
        for seed in (1, 2, 3)
    }
    assert all(a == b and a for a, b in runs.values())
    assert len({tuple(a) for a, _ in runs.values()}) > 1


def test_n_answers_each_finish(triton, tokenizers):
    ids = chat_ids(tokenizers[SMOL])
    results = stream(triton.grpc_url, SMOL, ids, {"max_tokens": 8, "temperature": 1.0, "seed": 5, "n": 3})
    assert {int(r.as_numpy("index")[0]) for r in results} == {0, 1, 2}
    assert all(finish_of(results, i) in ("stop", "length") for i in range(3))


def test_stop_string_ends_the_answer(triton, tokenizers):
    ids = chat_ids(tokenizers[SMOL])
    full = tokenizers[SMOL].decode(tokens_of(stream(triton.grpc_url, SMOL, ids, {"max_tokens": 32, "temperature": 0})))
    stop = " of "
    assert stop in full
    results = stream(triton.grpc_url, SMOL, ids, {"max_tokens": 32, "temperature": 0, "stop": [stop]})
    assert finish_of(results) == "stop"
    # The engine stops at the stop string; its tokens still spell it (postprocess cuts the text).
    text = tokenizers[SMOL].decode(tokens_of(results))
    assert stop in text and len(text) < len(full)


def test_json_schema_output_parses_and_validates(triton, tokenizers):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 40}, "is_capital": {"type": "boolean"}},
        "required": ["city", "is_capital"],
        "additionalProperties": False,
    }
    messages = [{"role": "user", "content": "Is Paris the capital of France? Answer as JSON."}]
    params = {"max_tokens": 80, "temperature": 0, "structured_output": {"json": schema}}
    results = stream(triton.grpc_url, SMOL, chat_ids(tokenizers[SMOL], messages), params)
    assert finish_of(results) == "stop"
    document = json.loads(tokenizers[SMOL].decode(tokens_of(results), skip_special_tokens=True))
    assert set(document) == {"city", "is_capital"}
    assert isinstance(document["city"], str) and len(document["city"]) <= 40
    assert isinstance(document["is_capital"], bool)


def test_prompt_logprobs_match_transformers(triton, tokenizers):
    model_dir = find_model(default_models(), SMALL).resolved_dir()
    ids = tokenizers[SMALL].encode("Return the JSON representation of obj as a str.")
    results = stream(triton.grpc_url, SMALL, ids, {"max_tokens": 1, "prompt_logprobs": True})
    got = np.concatenate([r.as_numpy("prompt_logprobs") for r in results])
    import torch

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
    want = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0].numpy()
    np.testing.assert_allclose(got, want, atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize(
    ("ids", "params", "says"),
    [
        ([1, 10**9], {"max_tokens": 4}, "outside the vocabulary"),
        ([1, 2, 3], {"max_tokens": 4, "top_p": 0}, "top_p"),
        ([1, 2, 3], {"max_tokens": 4, "beam_width": 2}, "unsupported parameter(s): beam_width"),
        ([1, 2, 3], {"max_tokens": 4000}, "exceeds the context"),
        ([1, 2, 3], {"max_tokens": 4, "structured_output": {"json": {"type": "no-such-type"}}}, "no-such-type"),
    ],
)
def test_invalid_requests_are_refused_as_the_clients_fault(triton, ids, params, says):
    with pytest.raises(InferenceServerException) as raised:
        stream(triton.grpc_url, SMOL, ids, params, timeout=60)
    assert semconv.ENGINE_INVALID_REQUEST_PREFIX + "" in raised.value.message()
    assert says in raised.value.message()


def test_a_cancelled_stream_leaves_the_engine(triton, tokenizers):
    ids = chat_ids(tokenizers[SMOL], [{"role": "user", "content": "Write a very long story."}])
    aborted = metric(triton, semconv.METRIC_ENGINE_ABORTED, SMOL)
    stream(triton.grpc_url, SMOL, ids, {"max_tokens": 1500, "ignore_eos": True}, cancel_after=3)
    deadline = time.monotonic() + 20
    while metric(triton, semconv.METRIC_ENGINE_RUNNING, SMOL) > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(triton, semconv.METRIC_ENGINE_RUNNING, SMOL) == 0
    assert metric(triton, semconv.METRIC_ENGINE_ABORTED, SMOL) == aborted + 1
    # Nothing is generated for the cancelled request any more.
    generated = metric(triton, semconv.METRIC_ENGINE_GENERATION_TOKENS, SMOL)
    time.sleep(1.0)
    assert metric(triton, semconv.METRIC_ENGINE_GENERATION_TOKENS, SMOL) == generated


def test_concurrent_streams_are_batched_together(triton, tokenizers):
    """Continuous batching: while 8 streams run, the engine generates for several at once."""
    ids = chat_ids(tokenizers[SMOL], [{"role": "user", "content": "Tell me a story."}])
    params = {"max_tokens": 48, "ignore_eos": True, "temperature": 0}
    most_running, done = 0.0, threading.Event()

    def watch():
        nonlocal most_running
        while not done.is_set():
            most_running = max(most_running, metric(triton, semconv.METRIC_ENGINE_RUNNING, SMOL))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: stream(triton.grpc_url, SMOL, ids, params), range(8)))
    finally:
        done.set()
        watcher.join()
    assert len({tuple(tokens_of(r)) for r in results}) == 1  # batching changes no greedy answer
    assert most_running >= 4


def test_opentelemetry_trace_joins_callers_trace(triton, tokenizers, otlp_sink):
    """Triton's own spans (service.name=triton) arrive as OTLP/HTTP, parented by traceparent.

    tritonserver 2.51 now and then starts a root trace of its own for a request that carried a
    valid traceparent (tests/e2e/test_stack.py measures it); one of three requests must join."""
    for attempt in range(3):
        trace_id, span_id = f"4bf92f3577b34da6a3ce929d0e0e473{attempt}", "00f067aa0ba902b7"
        headers = {"traceparent": f"00-{trace_id}-{span_id}-01"}
        stream(triton.grpc_url, SMALL, [1, 2, 3], {"max_tokens": 2}, headers=headers)
        deadline = time.monotonic() + 20  # the exporter batches spans for a few seconds
        ours = []
        while time.monotonic() < deadline and not ours:
            ours = [(services, s) for services, s in otlp_sink.spans() if s.get("traceId", "").lower() == trace_id]
            time.sleep(0.2)
        if ours:
            break
    assert ours, "no Triton span in the caller's trace, three requests in a row"
    assert all(services == {"triton"} for services, _ in ours)
    assert any(s.get("parentSpanId", "").lower() == span_id for _, s in ours)
    assert {"InferRequest", SMALL, "compute"} <= {s["name"] for _, s in ours}


def test_an_engine_that_cannot_start_fails_the_stack_with_the_cause(tmp_path, monkeypatch):
    """What `make run` prints when an engine cannot start: the cause, from Triton's log."""
    from tools.stack import Ports, Stack, StackError

    monkeypatch.setenv("LLMESH_SMOLLM2_MODEL_DIR", str(tmp_path / "no-such-model"))
    # Triton serves only the broken engine, so it fails without loading the others first.
    stack = Stack(ports=Ports.free(), run_dir=tmp_path / "run", triton_models=("smollm2-135m-instruct",))
    with pytest.raises(StackError) as raised:
        stack.start(triton_timeout_s=300)
    message = str(raised.value)
    assert message.startswith("triton: tritonserver exited")
    assert "no-such-model is not a Hugging Face model directory" in message
