"""Latency of the Triton models, measured through tritonclient.grpc against a real server.

    python -m services.inference.triton_bench              # starts its own server on free ports
    python -m services.inference.triton_bench --url 127.0.0.1:8001   # or uses a running one

Reports start-up time, greedy generation (time to first token, time per further token) for
llmesh-small and llmesh-large, and scoring of a long prompt (sequential p50/p99, and throughput
with many concurrent clients, which is where the dynamic batcher earns its keep).
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import threading
import time
from contextlib import nullcontext
from typing import Any

import numpy as np

from mesh.net import free_ports


def _input(name: str, arr: np.ndarray) -> Any:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    t = grpcclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
    t.set_data_from_numpy(arr)
    return t


def generate_timed(url: str, model: str, ids: list[int], max_tokens: int) -> tuple[list[float], int, str]:
    """Arrival time of every streamed response (seconds after sending), tokens, finish reason."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((time.perf_counter(), result, error)))
    try:
        inputs = [
            _input("input_ids", np.asarray(ids, dtype=np.int64)),
            _input("max_tokens", np.asarray([max_tokens], dtype=np.int32)),
            _input("temperature", np.asarray([0.0], dtype=np.float32)),
        ]
        sent = time.perf_counter()
        client.async_stream_infer(model, inputs)
        times, n = [], 0
        while True:
            at, result, error = responses.get(timeout=120)
            if error is not None:
                raise error
            times.append(at - sent)
            n += result.as_numpy("token_ids").size
            reason = result.as_numpy("finish_reason")[0].decode()
            if reason:
                return times, n, reason
    finally:
        client.stop_stream()
        client.close()


def score_once(client: Any, ids: list[int]) -> float:
    started = time.perf_counter()
    client.infer("llmesh-small-score", [_input("input_ids", np.asarray([ids], dtype=np.int64))])
    return time.perf_counter() - started


def _pct(values: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(values), p))


def bench_generation(url: str, model: str, ids: list[int], max_tokens: int, runs: int) -> dict[str, Any]:
    ttft, per_token, tokens = [], [], []
    generate_timed(url, model, ids, 4)  # warm
    for _ in range(runs):
        times, n, reason = generate_timed(url, model, ids, max_tokens)
        ttft.append(times[0])
        tokens.append(n)
        if n > 1:
            per_token.append((times[-1] - times[0]) / (n - 1))
    return {
        "model": model,
        "prompt_tokens": len(ids),
        "generated_tokens": tokens,
        "ttft_ms_p50": 1000 * statistics.median(ttft),
        "per_token_ms_p50": 1000 * statistics.median(per_token),
        "tokens_per_s": 1 / statistics.median(per_token),
    }


def bench_scoring(url: str, ids: list[int], calls: int, clients: list[int], seconds: float) -> dict[str, Any]:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        for _ in range(3):
            score_once(client, ids)
        lat = [score_once(client, ids) for _ in range(calls)]
    out: dict[str, Any] = {
        "prompt_tokens": len(ids),
        "sequential_ms_p50": 1000 * _pct(lat, 50),
        "sequential_ms_p99": 1000 * _pct(lat, 99),
        "sequential_per_s": 1 / statistics.mean(lat),
    }
    for n in clients:
        stop_at = time.perf_counter() + seconds
        done: list[list[float]] = [[] for _ in range(n)]

        def worker(k: int, stop_at: float = stop_at, done: list[list[float]] = done) -> None:
            with grpcclient.InferenceServerClient(url) as c:
                while time.perf_counter() < stop_at:
                    done[k].append(score_once(c, ids))

        started = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        all_lat = [x for d in done for x in d]
        out[f"concurrent_{n}"] = {
            "requests_per_s": len(all_lat) / elapsed,
            "tokens_per_s": len(all_lat) * len(ids) / elapsed,
            "latency_ms_p50": 1000 * _pct(all_lat, 50),
            "latency_ms_p99": 1000 * _pct(all_lat, 99),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", help="a running Triton's gRPC address; default: start one")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--score-tokens", type=int, default=512)
    p.add_argument("--score-calls", type=int, default=100)
    p.add_argument("--clients", default="16,32")
    p.add_argument("--seconds", type=float, default=10.0)
    # the small models stop early on most prompts; greedy continues this one to 64 tokens
    p.add_argument("--prompt", default=(
        "Generate a UUID from a host ID, sequence number, and the current time. If 'node' is not given, "
        "getnode() is used to obtain the hardware address. If 'clock_seq' is given, it is used as the "
        "sequence number; otherwise a random 14-bit sequence number is chosen."))  # fmt: skip
    args = p.parse_args()

    from transformers import AutoTokenizer

    from services.inference.triton_server import REPO_ROOT, TritonServer

    tokenizer = AutoTokenizer.from_pretrained(REPO_ROOT / "models" / "artifacts" / "small")
    prompt_ids = tokenizer(args.prompt)["input_ids"]
    long_ids = tokenizer(" ".join(tokenizer.decode(list(range(200, 1200))).split()))["input_ids"]
    long_ids = (long_ids * (args.score_tokens // max(1, len(long_ids)) + 1))[: args.score_tokens]

    report: dict[str, Any] = {}
    if args.url:
        server_cm: Any = nullcontext()
        url = args.url
    else:
        http, grpc, metrics = free_ports(3)
        server_cm = TritonServer(http_port=http, grpc_port=grpc, metrics_port=metrics)
        url = server_cm.grpc_url
    with server_cm as server:
        if server is not None:
            report["startup_s"] = server.startup_s
        report["generation"] = [
            bench_generation(url, m, prompt_ids, args.max_tokens, args.runs) for m in ("llmesh-small", "llmesh-large")
        ]
        clients = [int(c) for c in args.clients.split(",") if c]
        report["scoring"] = bench_scoring(url, long_ids, args.score_calls, clients, args.seconds)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
