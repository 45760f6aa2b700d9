"""The real tritonserver from the nvidia-pytriton wheel, with our model repository.

Uses models/artifacts/{small,large}; LLMESH_MODEL_DIR_OVERRIDE (or LLMESH_SMALL_MODEL_DIR /
LLMESH_LARGE_MODEL_DIR) points it at any other HF causal-LM directories instead.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException, np_to_triton_dtype  # noqa: E402

from services.inference.triton_models.common import context_length  # noqa: E402
from mesh.net import free_ports  # noqa: E402
from services.inference.triton_server import REPO_ROOT, TritonServer  # noqa: E402

PROMPT = "json.dumps(obj, *, skipkeys=False)\nSerialize obj to a JSON formatted str. If"


def _model_dir(size: str) -> Path | None:
    raw = (
        os.environ.get(f"LLMESH_{size.upper()}_MODEL_DIR")
        or os.environ.get("LLMESH_MODEL_DIR_OVERRIDE")
        or str(REPO_ROOT / "models" / "artifacts" / size)
    )
    path = Path(raw)
    return path if (path / "config.json").is_file() else None


@pytest.fixture(scope="module")
def model_dirs() -> dict[str, Path]:
    dirs = {size: _model_dir(size) for size in ("small", "large")}
    missing = [size for size, d in dirs.items() if d is None]
    if missing:
        pytest.skip(
            f"no trained model for {', '.join(missing)} (models/artifacts/<size> has no config.json; "
            "run `python -m models.train` or set LLMESH_MODEL_DIR_OVERRIDE to an HF causal-LM directory)"
        )
    return dirs  # type: ignore[return-value]


class _OtlpSink(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received.append((self.path, self.headers.get("Content-Type"), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def otlp_sink():
    """A stand-in OTLP/HTTP collector that keeps every POST."""
    _OtlpSink.received = []
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _OtlpSink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    yield sink
    sink.shutdown()


@pytest.fixture(scope="module")
def triton(model_dirs, otlp_sink, tmp_path_factory):
    http, grpc, metrics = free_ports(3)
    server = TritonServer(
        http_port=http, grpc_port=grpc, metrics_port=metrics,
        otlp_endpoint=f"http://127.0.0.1:{otlp_sink.server_address[1]}",
        env={"LLMESH_SMALL_MODEL_DIR": str(model_dirs["small"]), "LLMESH_LARGE_MODEL_DIR": str(model_dirs["large"])},
        log_file=tmp_path_factory.mktemp("triton") / "tritonserver.log",
    )  # fmt: skip
    with server:
        print(f"tritonserver ready in {server.startup_s:.1f}s")
        yield server


@pytest.fixture(scope="module")
def tokenizer(model_dirs):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dirs["small"])


@pytest.fixture(scope="module")
def prompt_ids(tokenizer) -> list[int]:
    return tokenizer(PROMPT)["input_ids"]


def _input(name: str, arr: np.ndarray):
    t = tritonclient_grpc.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
    t.set_data_from_numpy(arr)
    return t


def stream(url, model, ids, max_tokens, *, temperature=0.0, top_p=1.0, seed=None, stop=None, timeout=60.0):
    """One streamed generation; returns the raw InferResult of every response, in order."""
    client = tritonclient_grpc.InferenceServerClient(url)
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        inputs = [
            _input("input_ids", np.asarray(ids, dtype=np.int64)),
            _input("max_tokens", np.asarray([max_tokens], dtype=np.int32)),
            _input("temperature", np.asarray([temperature], dtype=np.float32)),
            _input("top_p", np.asarray([top_p], dtype=np.float32)),
        ]
        if seed is not None:
            inputs.append(_input("seed", np.asarray([seed], dtype=np.int64)))
        if stop:
            inputs.append(_input("stop", np.asarray([s.encode() for s in stop], dtype=np.object_)))
        client.async_stream_infer(model, inputs)
        out = []
        while True:
            result, error = responses.get(timeout=timeout)
            if error is not None:
                raise error
            out.append(result)
            if result.as_numpy("finish_reason")[0]:
                return out
    finally:
        client.stop_stream()
        client.close()


def tokens_of(results) -> list[int]:
    return [int(t) for r in results for t in r.as_numpy("token_ids")]


def score(url, ids) -> np.ndarray:
    with tritonclient_grpc.InferenceServerClient(url) as client:
        result = client.infer("llmesh-small-score", [_input("input_ids", np.asarray([ids], dtype=np.int64))])
        return result.as_numpy("token_logprobs")


def test_stream_carries_real_tensor_bytes(triton, prompt_ids, tokenizer):
    results = stream(triton.grpc_url, "llmesh-small", prompt_ids, 8)
    assert len(results) >= 2, "expected one streamed response per token"
    vocab = len(tokenizer)
    for i, r in enumerate(results):
        raw = r.get_response()
        # numpy 2 inside the stub yields responses whose tensors carry no bytes at all
        contents = dict(zip([o.name for o in raw.outputs], raw.raw_output_contents))
        ids, lps = r.as_numpy("token_ids"), r.as_numpy("token_logprobs")
        final = i == len(results) - 1
        assert ids.dtype == np.int64 and lps.dtype == np.float32
        assert ids.shape == lps.shape and (final or ids.shape == (1,))
        assert len(contents["token_ids"]) == 8 * ids.size and len(contents["token_logprobs"]) == 4 * ids.size
        assert len(contents["finish_reason"]) > 0  # BYTES: a 4-byte length even for b""
        assert ((0 <= ids) & (ids < vocab)).all()
        assert np.isfinite(lps).all() and (lps <= 0).all()
        if not final:
            assert r.as_numpy("finish_reason")[0] == b""
    assert results[-1].as_numpy("finish_reason")[0] in (b"stop", b"length")


@pytest.mark.parametrize("model", ["llmesh-small", "llmesh-large"])
def test_greedy_is_deterministic_and_honours_max_tokens(triton, prompt_ids, model):
    first = stream(triton.grpc_url, model, prompt_ids, 12)
    second = stream(triton.grpc_url, model, prompt_ids, 12)
    assert tokens_of(first) == tokens_of(second)
    n, reason = len(tokens_of(first)), first[-1].as_numpy("finish_reason")[0]
    assert n <= 12
    assert (reason == b"length") == (n == 12)


def test_seeded_sampling_is_reproducible(triton, prompt_ids):
    kwargs = dict(temperature=1.0, top_p=0.9, seed=1234)
    a = tokens_of(stream(triton.grpc_url, "llmesh-small", prompt_ids, 16, **kwargs))
    b = tokens_of(stream(triton.grpc_url, "llmesh-small", prompt_ids, 16, **kwargs))
    assert a == b and len(a) > 0


def test_max_tokens(triton, prompt_ids):
    results = stream(triton.grpc_url, "llmesh-small", prompt_ids, 3, temperature=1.0, seed=7)
    assert len(tokens_of(results)) <= 3
    zero = stream(triton.grpc_url, "llmesh-small", prompt_ids, 0)
    assert tokens_of(zero) == [] and zero[-1].as_numpy("finish_reason")[0] == b"length"


def test_stop_string(triton, prompt_ids, tokenizer):
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=False)  # noqa: E731
    # Seeded sampling gives a reference text (greedy output of these small models ends early)
    # from which a stop string is cut; the same seed then replays it up to the stop string.
    for seed in range(20):
        full_ids = tokens_of(stream(triton.grpc_url, "llmesh-small", prompt_ids, 24, temperature=1.0, seed=seed))
        full = decode(full_ids)
        cut = [p for p in range(len(decode(full_ids[:2])), len(full) - 3)
               if full[p : p + 3].strip() and "\ufffd" not in full[p : p + 3]]  # fmt: skip
        if cut:
            break
    else:
        pytest.skip("no sampled output long enough to cut a stop string from")
    stop = full[cut[0] : cut[0] + 3]
    at = full.find(stop)

    results = stream(triton.grpc_url, "llmesh-small", prompt_ids, 24, temperature=1.0, seed=seed, stop=[stop])
    got = tokens_of(results)
    text = decode(got)
    assert results[-1].as_numpy("finish_reason")[0] == b"stop"
    assert stop not in text
    assert got == full_ids[: len(got)]
    assert full.startswith(text) and len(text) <= at


def test_concurrent_streams(triton, prompt_ids):
    with ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(stream, triton.grpc_url, "llmesh-small", prompt_ids, 10) for _ in range(4)]
        results = [f.result(timeout=120) for f in futs]
    assert len({tuple(tokens_of(r)) for r in results}) == 1


def test_bad_request_is_an_error_not_a_hang(triton):
    with pytest.raises(InferenceServerException, match="out of range"):
        stream(triton.grpc_url, "llmesh-small", [1, 10**9], 4, timeout=30)
    with pytest.raises(InferenceServerException, match="top_p"):
        stream(triton.grpc_url, "llmesh-small", [1, 2], 4, temperature=1.0, top_p=0.0, timeout=30)


def test_scoring_matches_transformers(triton, model_dirs, tokenizer, prompt_ids):
    import torch
    from transformers import AutoModelForCausalLM

    rng = np.random.default_rng(0)
    base = (prompt_ids * 40)[:300]
    seqs = [base[:n] for n in (2, 5, 17, 64, 200, 300)] + [list(rng.integers(0, len(tokenizer), 40))]
    with ThreadPoolExecutor(len(seqs)) as pool:  # concurrent, so the dynamic batcher mixes lengths
        got = list(pool.map(lambda s: score(triton.grpc_url, s), seqs))

    model = AutoModelForCausalLM.from_pretrained(model_dirs["small"], dtype=torch.float32).eval()
    for seq, lp in zip(seqs, got):
        assert lp.shape == (1, len(seq) - 1) and lp.dtype == np.float32
        assert np.isfinite(lp).all() and (lp < 0).all()
        # past the context the server scores in sliding windows; its first window is exact
        head = seq[: context_length(model)]
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([head])).logits[0, :-1]
            want = torch.log_softmax(logits, -1).gather(-1, torch.tensor(head[1:])[:, None])[:, 0].numpy()
        np.testing.assert_allclose(lp[0, : len(head) - 1], want, atol=2e-3, rtol=1e-3)


def test_scoring_bad_request_does_not_fail_the_batch(triton):
    with ThreadPoolExecutor(2) as pool:
        good = pool.submit(score, triton.grpc_url, [1, 2, 3])
        bad = pool.submit(score, triton.grpc_url, [1, 10**9])
        assert good.result(timeout=30).shape == (1, 2)
        with pytest.raises(InferenceServerException, match="out of range"):
            bad.result(timeout=30)


def test_opentelemetry_trace_joins_callers_trace(triton):
    """Triton's own spans (service.name=triton) arrive as OTLP/HTTP, parented by traceparent."""
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with tritonclient_grpc.InferenceServerClient(triton.grpc_url) as client:
        client.infer(
            "llmesh-small-score", [_input("input_ids", np.asarray([[1, 2, 3]], dtype=np.int64))],
            headers={"traceparent": f"00-{trace_id}-{span_id}-01"},
        )  # fmt: skip
    deadline = time.monotonic() + 20  # the exporter batches spans for a few seconds
    while time.monotonic() < deadline and trace_id not in _spans_text().lower():
        time.sleep(0.2)
    assert _OtlpSink.received, "Triton posted no spans"
    path, ctype, _ = _OtlpSink.received[0]
    assert path == "/v1/traces" and "json" in (ctype or "")
    spans, services = [], set()
    for _, _, body in list(_OtlpSink.received):
        for rs in json.loads(body).get("resourceSpans", []):
            for attr in rs.get("resource", {}).get("attributes", []):
                if attr["key"] == "service.name":
                    services.add(attr["value"].get("stringValue"))
            for ss in rs.get("scopeSpans", []):
                spans.extend(ss.get("spans", []))
    assert services == {"triton"}
    ours = [s for s in spans if s.get("traceId", "").lower() == trace_id]
    assert ours, f"no span in the caller's trace; got {[s.get('name') for s in spans]}"
    assert any(s.get("parentSpanId", "").lower() == span_id for s in ours)
    assert {"InferRequest", "llmesh-small-score", "compute"} <= {s["name"] for s in ours}


def _spans_text() -> str:
    return "".join(body.decode(errors="replace") for _, _, body in _OtlpSink.received)
