"""Refusal latency under overload, per model: how fast a request that finds its model full is
answered (429 ``overloaded`` with Retry-After over REST, RESOURCE_EXHAUSTED ``OVERLOADED`` over
gRPC), through the whole real stack on loopback.

    python -m tools.bench.queue [--clients 3] [--seconds 8] [--max-tokens 32] [--base-port N]

A stack of its own on free ports (Redis, Triton with llmesh-small on vLLM, every service, the
gateway), serving llmesh-small alone and admitting one call of it at a time with no queue
(``LLMESH_MODEL_LIMITS``); the processes' own limits are far above, so what refuses is the
inference service's per-model admission. ``clients`` closed-loop clients per edge then send
chat completions back to back for ``seconds``; each answer's latency is taken at the client.
The same load is then sent straight to the inference service over gRPC
(``inference``): the refusal itself, without the pipeline in front of it (the gateway,
preprocess and router run before the model is known, so a refused request costs those first).
Progress on stderr, the table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx

from tools.bench.mesh import percentile_ms

MODEL = "llmesh-small"
PROMPT = "What is the capital of France?"
NO_CACHE = {"cache-control": "no-cache"}
# One running, none waiting: with more than one client the model is overloaded.
LIMITS = {MODEL: {"max_concurrent": 1, "max_queued": 0}}


@dataclass(frozen=True)
class Outcome:
    status: str  # ok | overloaded | the other error's name
    seconds: float


@dataclass(frozen=True)
class Edge:
    edge: str
    requests: int
    accepted: int
    refused: int
    other: int
    p50_ms: float
    p99_ms: float
    within_50ms: float
    accepted_p50_ms: float
    # The gateway's own histogram of its 429 answers (REST only): the share within 50 ms.
    gateway_within_50ms: float = math.nan


def summarise(edge: str, outcomes: Sequence[Outcome]) -> Edge:
    refused = [o.seconds for o in outcomes if o.status == "overloaded"]
    accepted = [o.seconds for o in outcomes if o.status == "ok"]
    return Edge(
        edge=edge,
        requests=len(outcomes),
        accepted=len(accepted),
        refused=len(refused),
        other=len(outcomes) - len(accepted) - len(refused),
        p50_ms=percentile_ms(refused, 0.5),
        p99_ms=percentile_ms(refused, 0.99),
        within_50ms=round(sum(s <= 0.05 for s in refused) / len(refused), 4) if refused else math.nan,
        accepted_p50_ms=percentile_ms(accepted, 0.5),
    )


def stack_env() -> dict[str, str]:
    """llmesh-small alone (the committed model: no other weights needed), routed to itself."""
    from mesh.catalog import default_models

    small = next(spec for spec in default_models() if spec.name == MODEL)
    routed = {
        f"LLMESH_{name}": MODEL
        for name in ("SCORING_MODEL", "FIXED_MODEL", "SMALL_MODEL", "LARGE_MODEL", "DEGRADED_MODEL")
    }
    return {
        "LLMESH_MODELS": json.dumps([small.model_dump(mode="json")]),
        "LLMESH_EMBEDDING_MODELS": "[]",
        "LLMESH_ROUTE_POLICY": "fixed",
        **routed,
        "LLMESH_MODEL_LIMITS": json.dumps(LIMITS),
        # The processes' own admission out of the way: the model's is measured.
        "LLMESH_MAX_CONCURRENT_REQUESTS": "1024",
        "LLMESH_MAX_QUEUED_REQUESTS": "1024",
        "LLMESH_RATE_LIMITS_ENABLED": "false",
    }


async def closed_loop(one: Callable[[], Awaitable[str]], clients: int, seconds: float, label: str) -> list[Outcome]:
    outcomes: list[Outcome] = []
    end = time.monotonic() + seconds

    async def client() -> None:
        while time.monotonic() < end:
            started = time.perf_counter()
            status = await one()
            outcomes.append(Outcome(status, time.perf_counter() - started))
            if status != "ok" and status != "overloaded":
                await asyncio.sleep(0.05)  # an unexpected error: do not spin on it

    async def progress() -> None:
        while time.monotonic() < end:
            await asyncio.sleep(1.0)
            refused = sum(o.status == "overloaded" for o in outcomes)
            print(f"  {label}: {len(outcomes)} answered, {refused} refused", file=sys.stderr, flush=True)

    ticker = asyncio.create_task(progress())
    await asyncio.gather(*(client() for _ in range(clients)))
    ticker.cancel()
    return outcomes


def rest_call(http: httpx.AsyncClient, max_tokens: int) -> Callable[[], Awaitable[str]]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens}

    async def one() -> str:
        response = await http.post("/v1/chat/completions", json=body)
        if response.status_code == 200:
            return "ok"
        code = response.json().get("error", {}).get("code")
        if response.status_code == 429 and code == "overloaded" and response.headers.get("retry-after"):
            return "overloaded"
        return f"http-{response.status_code}-{code}"

    return one


def grpc_call(addr: str, api_key: str, max_tokens: int) -> tuple[grpc.aio.Channel, Callable[[], Awaitable[str]]]:
    from llmesh.common.v1 import common_pb2
    from llmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc

    channel = grpc.aio.insecure_channel(addr)
    stub = gateway_pb2_grpc.GatewayServiceStub(channel)
    metadata = (("authorization", f"Bearer {api_key}"), *NO_CACHE.items())
    request = gateway_pb2.ChatRequest(
        model=MODEL,
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=PROMPT)],
        sampling=common_pb2.SamplingParams(max_tokens=max_tokens),
    )

    return channel, _grpc_outcome(lambda: stub.Chat(request, timeout=60, metadata=metadata))


def refusals_by_bucket(metrics_text: str) -> dict[float, float]:
    """The gateway's histogram of its 429 answers: upper bound (s) -> cumulative count."""
    from prometheus_client.parser import text_string_to_metric_families

    from mesh import semconv

    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == f"{semconv.METRIC_GATEWAY_DURATION}_bucket" and sample.labels.get("status") == "429":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return buckets


def inference_call(addr: str, max_tokens: int) -> tuple[grpc.aio.Channel, Callable[[], Awaitable[str]]]:
    """Straight to the inference service, where the model's admission refuses: the refusal
    without the gateway, preprocess and router in front of it."""
    from llmesh.common.v1 import common_pb2
    from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc

    channel = grpc.aio.insecure_channel(addr)
    stub = inference_pb2_grpc.InferenceServiceStub(channel)
    request = inference_pb2.GenerateRequest(
        model=MODEL,
        # Token ids of llmesh-small's own vocabulary: nothing tokenizes on this path.
        prompts=[common_pb2.ModelPrompt(model=MODEL, token_ids=[5, 6, 7, 8, 9, 10])],
        sampling=common_pb2.SamplingParams(max_tokens=max_tokens),
    )
    return channel, _grpc_outcome(lambda: stub.Generate(request, timeout=60))


def _grpc_outcome(call: Callable[[], Awaitable[object]]) -> Callable[[], Awaitable[str]]:
    from mesh.errors import error_info

    async def one() -> str:
        try:
            await call()
        except grpc.aio.AioRpcError as error:
            info = error_info(error)
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and info and info.reason == "OVERLOADED":
                return "overloaded"
            return f"grpc-{error.code().name}-{info.reason if info else ''}"
        return "ok"

    return one


async def measure(
    gateway_url: str, grpc_addr: str, inference_addr: str, api_key: str, args: argparse.Namespace
) -> list[Edge]:
    headers = {"authorization": f"Bearer {api_key}", **NO_CACHE}
    async with httpx.AsyncClient(
        base_url=gateway_url, headers=headers, timeout=60, limits=httpx.Limits(max_connections=64)
    ) as http:
        rest = rest_call(http, args.max_tokens)
        channel, grpc_one = grpc_call(grpc_addr, api_key, args.max_tokens)
        direct_channel, direct = inference_call(inference_addr, args.max_tokens)
        try:
            print("warm-up ...", file=sys.stderr, flush=True)
            for _ in range(3):
                await rest()
                await grpc_one()
            edges = []
            for label, one in (("rest", rest), ("grpc", grpc_one), ("inference", direct)):
                print(f"{label}: {args.clients} clients for {args.seconds:.0f} s", file=sys.stderr, flush=True)
                before = refusals_by_bucket((await http.get("/metrics")).text)
                edge = summarise(label, await closed_loop(one, args.clients, args.seconds, label))
                after = refusals_by_bucket((await http.get("/metrics")).text)
                counted = after.get(math.inf, 0.0) - before.get(math.inf, 0.0)
                if label == "rest" and counted:
                    share = (after.get(0.05, 0.0) - before.get(0.05, 0.0)) / counted
                    edge = dataclasses.replace(edge, gateway_within_50ms=round(share, 4))
                edges.append(edge)
            return edges
        finally:
            await channel.close()
            await direct_channel.close()


def table(edges: Sequence[Edge], clients: int) -> str:
    lines = [
        f"refusals of {MODEL} at capacity (1 running, 0 waiting), {clients} closed-loop clients per edge; "
        "latencies at the client",
        "| edge | requests | accepted | refused | other errors | refusal p50 ms | refusal p99 ms "
        "| refused within 50 ms | at the gateway | accepted p50 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in edges:
        gateway = "-" if math.isnan(e.gateway_within_50ms) else f"{e.gateway_within_50ms:.1%}"
        lines.append(
            f"| {e.edge} | {e.requests} | {e.accepted} | {e.refused} | {e.other} | {e.p50_ms} | {e.p99_ms} "
            f"| {e.within_50ms:.1%} | {gateway} | {e.accepted_p50_ms} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.queue", description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=3, help="closed-loop clients per edge (default 3: 3x overload)")
    parser.add_argument("--seconds", type=float, default=8.0, help="load per edge (default 8)")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per accepted answer (default 32)")
    parser.add_argument(
        "--run-dir", type=Path, default=None, help="the stack's run directory (default: a temporary one)"
    )
    parser.add_argument("--base-port", type=int, default=0, help="consecutive ports from here (default: free ones)")
    args = parser.parse_args(argv)
    if args.clients < 2 or args.seconds <= 0:
        parser.error("--clients must be at least 2 (one is never refused) and --seconds positive")

    from tools.stack import Ports, Stack

    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="llmesh-bench-queue-"))
    print(f"starting a stack serving {MODEL} in {run_dir} (the engine takes a minute to load) ...", file=sys.stderr)
    ports = Ports.from_base(args.base_port) if args.base_port else Ports.free()
    with Stack(
        ports=ports,
        run_dir=run_dir,
        extra_env=stack_env(),
        on_ready=lambda name, s: print(f"  ready {name:<12} {s:5.1f}s", file=sys.stderr, flush=True),
        triton_models=(MODEL,),
    ) as stack:
        api_key = stack.create_key("bench", "bench queue")
        addrs = (stack.env["LLMESH_GATEWAY_GRPC_ADDR"], stack.env["LLMESH_INFERENCE_ADDR"])
        edges = asyncio.run(measure(stack.gateway_url, *addrs, api_key, args))
    print(table(edges, args.clients))
    return 0 if all(e.refused and not e.other for e in edges) else 1


if __name__ == "__main__":
    sys.exit(main())
