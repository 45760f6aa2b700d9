"""`llmesh bench mesh`: what the mesh adds to a request, measured side by side with Triton alone.

Every figure is a difference or a ratio against a baseline measured in the same run (absolute
times vary between machines): the same prompt, ``max_tokens=1``, the same client process,
straight to Triton with ``tritonclient.grpc.aio`` streaming (as the inference service calls it),
then through the gateway's REST edge (unary and SSE) and its gRPC edge, for a fixed model and
for ``auto``. Each level is closed-loop: ``concurrency`` workers send requests back to back until
the level's count is done. Gateway requests say ``Cache-Control: no-cache``, so the response
cache never answers them; the cache levels measure it on purpose.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import random
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx

from tools.bench.engine import DirectPath, GatewayPath, Stream

# 19 tokens in llmesh-small's chat template, as in the measurement.
PROMPT = "What is the capital of France?"
FIXED_MODEL = "llmesh-small"
AUTO_MODEL = "auto"
NO_CACHE = {"cache-control": "no-cache"}

One = Callable[[int], Awaitable[Stream]]


@dataclass(frozen=True)
class Level:
    """One phase (tracing on/off), path, model, kind and number of concurrent requests."""

    phase: str
    path: str  # direct | rest | rest-stream | grpc
    model: str
    kind: str  # latency (max_tokens=1) | stream (longer answers) | open-loop | cache-hit | cache-miss | cache-replay
    # Concurrent requests of a closed loop; for open-loop levels, the rate sent (requests/s).
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    ttft_p50_ms: float
    gap_p50_ms: float
    completion_tokens: int
    # Answers the response cache gave (its x-llmesh-cache header said hit).
    cache_hits: int = 0

    @property
    def req_per_s(self) -> float:
        return round(self.requests / self.wall_s, 1) if self.wall_s else 0.0

    @property
    def tokens_per_s(self) -> float:
        return round(self.completion_tokens / self.wall_s, 1) if self.wall_s else 0.0


def percentile_ms(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, in milliseconds (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(1000 * ordered[min(max(math.ceil(q * len(ordered)) - 1, 0), len(ordered) - 1)], 2)


class RestUnary:
    """``POST /v1/chat/completions`` without streaming; keeps the trace ids it was answered with."""

    def __init__(self, url: str, api_key: str, headers: dict[str, str] | None = None) -> None:
        self.client = httpx.AsyncClient(
            base_url=url,
            headers={"authorization": f"Bearer {api_key}", **(headers or {})},
            timeout=120,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )
        self.trace_ids: list[str] = []
        self.cache_headers: Counter[str] = Counter()

    def call(
        self, model: str, max_tokens: int, headers: dict[str, str] | None = None, prompts: Sequence[str] = (PROMPT,)
    ) -> One:
        """Request ``index`` asks ``prompts[index % len(prompts)]``."""
        bodies = [
            {"model": model, "messages": [{"role": "user", "content": p}], "max_tokens": max_tokens, "temperature": 0}
            for p in prompts
        ]

        async def one(index: int) -> Stream:
            started = time.perf_counter()
            body = bodies[index % len(bodies)]
            response = await self.client.post("/v1/chat/completions", json=body, headers=headers)
            latency = time.perf_counter() - started
            if response.status_code != 200:
                raise RuntimeError(f"gateway answered {response.status_code}: {response.text[:200]}")
            self.trace_ids.append(response.headers.get("x-trace-id", ""))
            self.cache_headers[response.headers.get("x-llmesh-cache", "none")] += 1
            return Stream(response.json()["usage"]["completion_tokens"], latency, latency)

        return one

    async def close(self) -> None:
        await self.client.aclose()


class GrpcUnary:
    """``GatewayService.Chat`` on the gateway's gRPC edge."""

    def __init__(self, addr: str, api_key: str) -> None:
        from llmesh.gateway.v1 import gateway_pb2_grpc

        self.channel = grpc.aio.insecure_channel(addr)
        self.stub = gateway_pb2_grpc.GatewayServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {api_key}"), *NO_CACHE.items())

    def call(self, model: str, max_tokens: int) -> One:
        from llmesh.common.v1 import common_pb2
        from llmesh.gateway.v1 import gateway_pb2

        request = gateway_pb2.ChatRequest(
            model=model,
            messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=PROMPT)],
            sampling=common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0),
        )

        async def one(index: int) -> Stream:
            started = time.perf_counter()
            reply = await self.stub.Chat(request, timeout=120, metadata=self.metadata)
            latency = time.perf_counter() - started
            return Stream(reply.usage.completion_tokens, latency, latency)

        return one

    async def close(self) -> None:
        await self.channel.close()


@dataclass
class Endpoints:
    """Where one running stack answers, and a key with limits no benchmark reaches."""

    gateway_url: str
    gateway_grpc_addr: str
    triton_grpc_addr: str
    api_key: str
    trace_db: Path | None = None


async def closed_loop(one: One, concurrency: int, requests: int) -> tuple[list[Stream], int, float]:
    """``concurrency`` workers sending back to back until ``requests`` have been sent; a failed
    request is counted, not retried."""
    next_index = 0
    done: list[Stream] = []
    errors = 0

    async def worker() -> None:
        nonlocal next_index, errors
        while next_index < requests:
            index, next_index = next_index, next_index + 1
            try:
                done.append(await one(index))
            except Exception:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, errors, time.perf_counter() - started


async def open_loop(one: One, rate: float, requests: int) -> tuple[list[Stream], int, float]:
    """``requests`` sent at ``rate`` per second, evenly spaced, each without waiting for the
    earlier ones (traffic arrives as users send it, whatever the latency): the latency under a
    given offered load, queueing included, which a closed loop hides by slowing its senders."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    sent = []
    for index in range(requests):
        delay = started + index / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        sent.append(asyncio.ensure_future(one(index)))
    outcomes = await asyncio.gather(*sent, return_exceptions=True)
    done = [outcome for outcome in outcomes if isinstance(outcome, Stream)]
    return done, len(outcomes) - len(done), loop.time() - started


def level(
    phase: str, path: str, model: str, kind: str, concurrency: int, streams: list[Stream], errors: int, wall: float
) -> Level:
    latencies = [s.latency_s for s in streams]
    gaps = [gap for s in streams for gap in s.gaps_s]
    return Level(
        phase,
        path,
        model,
        kind,
        concurrency,
        len(streams),
        errors,
        round(wall, 3),
        percentile_ms(latencies, 0.5),
        percentile_ms(latencies, 0.9),
        percentile_ms(latencies, 0.99),
        percentile_ms([s.ttft_s for s in streams], 0.5),
        percentile_ms(gaps, 0.5),
        sum(s.completion_tokens for s in streams),
    )


@dataclass(frozen=True)
class Plan:
    concurrencies: tuple[int, ...] = (1, 8, 32)
    requests: int = 128
    # `auto` costs the router's scoring (a forward pass of the student, ~150 ms here) per
    # request: fewer requests per level keep the run short (its p99 is the coarser for it).
    auto_requests: int = 48
    warmup: int = 8
    stream_tokens: int = 32
    stream_requests: int = 64
    stream_concurrencies: tuple[int, ...] = (1, 32)
    cache_requests: int = 100
    # The replayed workload: cache_requests requests drawn (seeded) from this many questions.
    replay_questions: int = 20
    # Open-loop rates (requests/s), stepped up until p99 passes FRONTIER_P99_MS; each rate for
    # open_loop_s seconds (at least 40 requests).
    rates: tuple[int, ...] = (25, 50, 100, 200, 400)
    open_loop_s: float = 3.0

    def rate_count(self, rate: int) -> int:
        return max(40, round(rate * self.open_loop_s))

    def count(self, concurrency: int, model: str = "") -> int:
        if model == AUTO_MODEL:
            return max(self.auto_requests, 2 * concurrency)
        return max(self.requests, 4 * concurrency)


@dataclass(frozen=True)
class Phase:
    """One stack and what is measured on it.

    ``scope``: ``full`` is every path, both models, streaming and the cache; ``core`` is the
    fixed model on every path, and streaming; ``minimal`` is direct and REST unary only (the
    tracing-off phases, measured against their tracing-on twin)."""

    name: str
    tracing: bool
    colocate: bool
    scope: str
    # LLMESH_TRACE_SAMPLE_RATIO: the share of requests traced end to end (Triton follows).
    sample_ratio: float = 1.0


# The sampled phase's ratio: a tenth of the requests traced, the kind of head sampling a busy
# production mesh runs (k8s/base sets the same).
SAMPLED_RATIO = 0.1
PHASES = (
    Phase("tracing on", tracing=True, colocate=False, scope="full"),
    Phase("tracing 10%", tracing=True, colocate=False, scope="minimal", sample_ratio=SAMPLED_RATIO),
    Phase("tracing off", tracing=False, colocate=False, scope="minimal"),
    Phase("co-located", tracing=True, colocate=True, scope="core"),
    Phase("co-located, tracing off", tracing=False, colocate=True, scope="minimal"),
)
# The throughput frontier: the highest open-loop rate answered with p99 within this and no errors.
FRONTIER_P99_MS = 100.0
# Each traced phase, and the tracing-off phase of the same stack layout it is compared with.
TRACING_OFF_TWIN = {
    traced.name: off.name
    for traced in PHASES
    if traced.tracing
    for off in PHASES
    if not off.tracing and off.colocate == traced.colocate
}


def steps(plan: Plan, scope: str) -> int:
    """How many levels one phase measures (for the progress bar)."""
    if scope == "minimal":
        return 2 * len(plan.concurrencies)
    streaming = 2 * len(plan.stream_concurrencies)
    # At most: the stepping stops at the first rate past the frontier.
    open_loop = 2 * len(plan.rates)
    if scope == "core":
        return 4 * len(plan.concurrencies) + streaming + open_loop
    return (1 + 3 * 2) * len(plan.concurrencies) + streaming + open_loop + 3


async def measure_phase(
    phase: str,
    endpoints: Endpoints,
    models: Sequence[Any],
    plan: Plan,
    scope: str,
    progress: Callable[[str], None] = lambda step: None,
) -> tuple[list[Level], list[str]]:
    """One stack's levels (what ``scope`` names, see Phase), and the trace ids of its REST
    unary requests to the fixed model at concurrency 1 (for the per-hop breakdown)."""
    spec = next(m for m in models if m.name == FIXED_MODEL)
    direct = DirectPath(endpoints.triton_grpc_addr, [spec], prompts=[PROMPT])
    rest = RestUnary(endpoints.gateway_url, endpoints.api_key)
    sse = GatewayPath(endpoints.gateway_url, endpoints.api_key, prompts=[PROMPT], headers=NO_CACHE)
    edge = GrpcUnary(endpoints.gateway_grpc_addr, endpoints.api_key)
    levels: list[Level] = []
    trace_ids: list[str] = []
    # A path is warmed up once per phase (connections, the models' first calls); the levels after
    # its first find it warm.
    warmed: set[tuple[str, str, str]] = set()

    async def warm(path: str, model: str, kind: str, one: One) -> None:
        if (path, model, kind) not in warmed:
            warmed.add((path, model, kind))
            for index in range(plan.warmup):
                await one(index)

    async def run(
        path: str, model: str, kind: str, one: One, concurrency: int, count: int, warmup: bool = True
    ) -> None:
        progress(f"{phase}: {path} {model} {kind} x{concurrency}")
        if warmup:
            await warm(path, model, kind, one)
        hits_before = rest.cache_headers["hit"]
        streams, errors, wall = await closed_loop(one, concurrency, count)
        measured = level(phase, path, model, kind, concurrency, streams, errors, wall)
        levels.append(dataclasses.replace(measured, cache_hits=rest.cache_headers["hit"] - hits_before))

    try:
        for concurrency in plan.concurrencies:
            count = plan.count(concurrency)
            await run("direct", FIXED_MODEL, "latency", direct.stream(FIXED_MODEL, 1), concurrency, count)
            rest_one = rest.call(FIXED_MODEL, 1, NO_CACHE)
            await warm("rest", FIXED_MODEL, "latency", rest_one)
            before = len(rest.trace_ids)
            await run("rest", FIXED_MODEL, "latency", rest_one, concurrency, count)
            if concurrency == 1:
                trace_ids = rest.trace_ids[before:]
            if scope == "minimal":
                continue
            models = (FIXED_MODEL, AUTO_MODEL) if scope == "full" else (FIXED_MODEL,)
            if scope == "full":
                auto_count = plan.count(concurrency, AUTO_MODEL)
                await run("rest", AUTO_MODEL, "latency", rest.call(AUTO_MODEL, 1, NO_CACHE), concurrency, auto_count)
            for model in models:
                count = plan.count(concurrency, model)
                await run("rest-stream", model, "latency", sse.stream(model, 1), concurrency, count)
                await run("grpc", model, "latency", edge.call(model, 1), concurrency, count)
        if scope != "minimal":
            for concurrency in plan.stream_concurrencies:
                count = max(plan.stream_requests, concurrency)
                tokens = plan.stream_tokens
                await run("direct", FIXED_MODEL, "stream", direct.stream(FIXED_MODEL, tokens), concurrency, count)
                await run("rest-stream", FIXED_MODEL, "stream", sse.stream(FIXED_MODEL, tokens), concurrency, count)
        if scope != "minimal":
            # Open loop, direct and REST unary to the fixed model: latency at fixed offered
            # rates, stepped up until the p99 passes the frontier's limit.
            for path, one in (("direct", direct.stream(FIXED_MODEL, 1)), ("rest", rest.call(FIXED_MODEL, 1, NO_CACHE))):
                for rate in plan.rates:
                    progress(f"{phase}: {path} {FIXED_MODEL} open loop {rate}/s")
                    await warm(path, FIXED_MODEL, "latency", one)
                    streams, errors, wall = await open_loop(one, rate, plan.rate_count(rate))
                    measured = level(phase, path, FIXED_MODEL, "open-loop", rate, streams, errors, wall)
                    levels.append(measured)
                    if errors or measured.p99_ms > FRONTIER_P99_MS:
                        break
        if scope == "full":
            # The same deterministic request again and again: after the first, the cache answers.
            await run("rest", FIXED_MODEL, "cache-hit", rest.call(FIXED_MODEL, 1), 1, plan.cache_requests)
            await run("rest", FIXED_MODEL, "cache-miss", rest.call(FIXED_MODEL, 1, NO_CACHE), 1, plan.cache_requests)
            # A workload with repeats, from a cold start: which share the cache answers.
            rng = random.Random(11)
            questions = [f"{PROMPT} Question {q}." for q in range(plan.replay_questions)]
            replay = [rng.choice(questions) for _ in range(plan.cache_requests)]
            replayed = rest.call(FIXED_MODEL, 1, prompts=replay)
            await run("rest", FIXED_MODEL, "cache-replay", replayed, 1, len(replay), warmup=False)
    finally:
        for client in (direct, rest, sse, edge):
            await client.close()
    return levels, trace_ids


# -- where the time goes ----------------------------------------------------------------------


def hops_from_traces(trace_db: Path, trace_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Median duration of each span (by process and name) over the given traces: the per-hop
    and per-step breakdown of one request, from the spans every process exported."""
    wanted = [t for t in trace_ids if t]
    if not wanted or not trace_db.exists():
        return []
    durations: dict[tuple[str, str], list[float]] = defaultdict(list)
    with sqlite3.connect(trace_db) as db:
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for (body,) in db.execute(f"SELECT body FROM spans WHERE trace_id IN ({marks})", chunk):
                span = json.loads(body)
                durations[(span["service"], span["name"])].append((span["end_ns"] - span["start_ns"]) / 1e6)
    rows = [
        {"service": service, "span": name, "count": len(values), "p50_ms": round(statistics.median(values), 2)}
        for (service, name), values in durations.items()
    ]
    return sorted(rows, key=lambda row: -row["p50_ms"])


def profile(pid: int, seconds: float, out: Path) -> dict[str, Any]:
    """py-spy samples of the gateway process for ``seconds`` (run while load is on): the raw
    collapsed stacks to ``out`` and the functions holding the most samples, own and inclusive."""
    # The venv's own py-spy (its bin/ need not be on PATH).
    beside = Path(sys.executable).parent / "py-spy"
    command = [
        str(beside) if beside.exists() else "py-spy",
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        "200",
        "--format",
        "raw",
        "--output",
        str(out),
        "--nonblocking",
    ]
    try:
        finished = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return {"error": "py-spy is not installed (pip install py-spy; it is in the dev extras)"}
    if finished.returncode != 0 or not out.exists():
        return {"error": (finished.stderr or finished.stdout).strip()[-500:]}
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        samples = int(count)
        frames = [_frame(frame) for frame in stack.split(";")]
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    share = lambda n: round(100 * n / total, 1) if total else 0.0  # noqa: E731
    return {
        "samples": total,
        "breakdown": breakdown(out),
        "own_top": [{"frame": f, "pct": share(n)} for f, n in own.most_common(25)],
        "inclusive_top": [{"frame": f, "pct": share(n)} for f, n in inclusive.most_common(40)],
    }


async def profile_under_load(
    pid: int, seconds: float, endpoints: Endpoints, out: Path, concurrency: int = 8
) -> dict[str, Any]:
    """:func:`profile` while ``concurrency`` clients send REST unary requests to the fixed model."""
    rest = RestUnary(endpoints.gateway_url, endpoints.api_key)
    one = rest.call(FIXED_MODEL, 1, NO_CACHE)
    sampling = asyncio.create_task(asyncio.to_thread(profile, pid, seconds, out))

    async def worker() -> None:
        while not sampling.done():
            try:
                await one(0)
            except Exception:
                await asyncio.sleep(0.01)

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await rest.close()
    return await sampling


# What a gateway sample was doing: the component of the innermost frame that belongs to one of
# these (py-spy names files by their last two path parts).
_ACTIVITIES = (
    ("span export (OTLP thread)", ("BatchProcessor", "OTLPSpanExporter", "trace_encoder/")),
    ("Redis client (tenancy, audit)", ("Redis.", "RESP", "AbstractConnection", "Script.", "redis/")),
    ("audit records and files, accounting", ("gateway/audit.py", "gateway/accounting.py")),
    ("gRPC client calls to the services", ("aio/_call.py", "aio/_interceptor.py", "aio/_channel.py", "_cython")),
    ("gRPC edge (server)", ("aio/_server.py", "gateway/grpc_edge.py")),
    ("OpenTelemetry spans in the request", ("trace/__init__.py", "asgi/__init__.py", "grpc/_client.py", "_asgi.py")),
    ("protobuf messages", ("protobuf/", "message.py", "_pb2")),
    ("request validation (pydantic)", ("pydantic", "openai_schema.py")),
    (
        "HTTP server and framework (uvicorn, Starlette, FastAPI)",
        ("uvicorn/", "starlette/", "fastapi/", "httptools", "middleware/", "routing.py"),
    ),
    # With uvloop the loop itself is C: its samples end in the frame that started it.
    (
        "event loop and sockets (waiting included)",
        ("selectors.py", "selector_events.py", "base_events.py", "events.py", "socket.py", "runners.py", "__main__.py"),
    ),
    # Co-located: the services' own work, and the in-process calls to them.
    ("services' work, in process (guards, tokenizers, Triton client)", ("services/", "textkit/", "tritonclient/")),
    ("in-process calls to the services (mesh/local.py)", ("mesh/local.py",)),
    ("gateway code (pipeline, guard, formats, edges)", ("gateway/",)),
    ("JSON", ("json/",)),
)


def breakdown(raw: Path) -> list[dict[str, Any]]:
    """py-spy's collapsed stacks grouped by activity (see _ACTIVITIES), largest first."""
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        counts[_activity(stack.split(";"))] += int(count)
    total = sum(counts.values())
    return [{"activity": name, "pct": round(100 * n / total, 1)} for name, n in counts.most_common()] if total else []


def _activity(frames: Sequence[str]) -> str:
    for frame in reversed(frames):
        for name, marks in _ACTIVITIES:
            if any(mark in frame for mark in marks):
                return name
    return "other"


def _frame(frame: str) -> str:
    """``function (path/to/module.py:LINE)`` -> ``module.py:function``, lines dropped so the
    samples of one function add up."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if parts else path
    return f"{short}:{name}"


# -- the report -------------------------------------------------------------------------------


def _by(levels: Sequence[Level]) -> dict[tuple[str, str, str, str, int], Level]:
    return {(lv.phase, lv.path, lv.model, lv.kind, lv.concurrency): lv for lv in levels}


def summary(levels: Sequence[Level]) -> dict[str, Any]:
    """Against the direct baseline of the same phase: added latency (p50/p90/p99 ms), ratios
    of latency and throughput; streaming TTFT and gaps; tracing on vs off; cache hit vs miss."""
    by = _by(levels)
    added = []
    for lv in levels:
        base = by.get((lv.phase, "direct", FIXED_MODEL, lv.kind, lv.concurrency))
        if lv.path == "direct" or base is None or lv.kind not in ("latency", "stream", "open-loop"):
            continue
        added.append(
            {
                "phase": lv.phase,
                "path": lv.path,
                "model": lv.model,
                "kind": lv.kind,
                "concurrency": lv.concurrency,
                "added_p50_ms": round(lv.p50_ms - base.p50_ms, 2),
                "added_p90_ms": round(lv.p90_ms - base.p90_ms, 2),
                "added_p99_ms": round(lv.p99_ms - base.p99_ms, 2),
                "p99_ratio": round(lv.p99_ms / base.p99_ms, 2) if base.p99_ms else None,
                "throughput_share": round(lv.req_per_s / base.req_per_s, 3) if base.req_per_s else None,
                "added_ttft_p50_ms": round(lv.ttft_p50_ms - base.ttft_p50_ms, 2),
                "added_gap_p50_ms": round(lv.gap_p50_ms - base.gap_p50_ms, 2),
                "tokens_per_s_share": round(lv.tokens_per_s / base.tokens_per_s, 3) if base.tokens_per_s else None,
            }
        )
    tracing = []
    for lv in levels:
        twin = TRACING_OFF_TWIN.get(lv.phase)
        off = by.get((twin, lv.path, lv.model, lv.kind, lv.concurrency)) if twin else None
        if off is None:
            continue
        tracing.append(
            {
                "phase": lv.phase,
                "path": lv.path,
                "concurrency": lv.concurrency,
                "req_per_s_on": lv.req_per_s,
                "req_per_s_off": off.req_per_s,
                "throughput_cost": round(1 - lv.req_per_s / off.req_per_s, 3) if off.req_per_s else None,
                "p99_on_ms": lv.p99_ms,
                "p99_off_ms": off.p99_ms,
            }
        )
    cache = {}
    hit = by.get(("tracing on", "rest", FIXED_MODEL, "cache-hit", 1))
    miss = by.get(("tracing on", "rest", FIXED_MODEL, "cache-miss", 1))
    replay = by.get(("tracing on", "rest", FIXED_MODEL, "cache-replay", 1))
    if replay and replay.requests:
        cache["replay_hit_rate"] = round(replay.cache_hits / replay.requests, 3)
        cache["replay_p50_ms"] = replay.p50_ms
    if hit and miss:
        cache |= {
            "hit_p50_ms": hit.p50_ms,
            "hit_p99_ms": hit.p99_ms,
            "miss_p50_ms": miss.p50_ms,
            "miss_p99_ms": miss.p99_ms,
        }
    return {"added": added, "tracing": tracing, "cache": cache, "frontier": frontier(levels)}


def frontier(levels: Sequence[Level]) -> list[dict[str, Any]]:
    """Per phase and path: the highest open-loop rate held (p99 within FRONTIER_P99_MS, no
    errors), and the first rate that was not."""
    rows = []
    for phase, path in sorted({(lv.phase, lv.path) for lv in levels if lv.kind == "open-loop"}):
        steps_ = sorted(
            (lv for lv in levels if (lv.phase, lv.path, lv.kind) == (phase, path, "open-loop")),
            key=lambda lv: lv.concurrency,
        )
        held = [lv for lv in steps_ if not lv.errors and lv.p99_ms <= FRONTIER_P99_MS]
        missed = next((lv for lv in steps_ if lv.errors or lv.p99_ms > FRONTIER_P99_MS), None)
        rows.append(
            {
                "phase": phase,
                "path": path,
                "held_rate": held[-1].concurrency if held else 0,
                "held_p99_ms": held[-1].p99_ms if held else None,
                "missed_rate": missed.concurrency if missed else None,
                "missed_p99_ms": missed.p99_ms if missed else None,
            }
        )
    return rows


def report(levels: Sequence[Level], meta: dict[str, Any]) -> dict[str, Any]:
    return {
        **meta,
        "levels": [{**asdict(lv), "req_per_s": lv.req_per_s, "tokens_per_s": lv.tokens_per_s} for lv in levels],
        "summary": summary(levels),
    }


def markdown(result: dict[str, Any]) -> str:
    """The report as markdown tables (docs/PERFORMANCE.md quotes them)."""
    settings = {k: v for k, v in result.items() if k in ("plan", "prompt")}
    lines = ["# llmesh bench mesh", "", f"`{json.dumps(settings)}`", ""]
    lines += [
        "## Levels",
        "",
        "| phase | path | model | kind | conc. | requests | errors | p50 ms | p90 ms"
        " | p99 ms | req/s | TTFT p50 ms | gap p50 ms | tokens/s |",
        "|" + " --- |" * 14,
    ]
    for lv in result["levels"]:
        lines.append(
            f"| {lv['phase']} | {lv['path']} | {lv['model']} | {lv['kind']} | {lv['concurrency']} | {lv['requests']} "
            f"| {lv['errors']} | {lv['p50_ms']} | {lv['p90_ms']} | {lv['p99_ms']} | {lv['req_per_s']} "
            f"| {lv['ttft_p50_ms']} | {lv['gap_p50_ms']} | {lv['tokens_per_s']} |"
        )
    lines += [
        "",
        "## Against direct Triton (same phase, same run)",
        "",
        "| phase | path | model | kind | conc. | +p50 ms | +p90 ms | +p99 ms | p99 × | throughput share"
        " | +TTFT p50 ms | +gap p50 ms | tokens/s share |",
        "|" + " --- |" * 13,
    ]
    for row in result["summary"]["added"]:
        lines.append(
            f"| {row['phase']} | {row['path']} | {row['model']} | {row['kind']} | {row['concurrency']} "
            f"| {row['added_p50_ms']} | {row['added_p90_ms']} | {row['added_p99_ms']} | {row['p99_ratio']} "
            f"| {row['throughput_share']} | {row['added_ttft_p50_ms']} | {row['added_gap_p50_ms']} "
            f"| {row['tokens_per_s_share']} |"
        )
    if result["summary"]["tracing"]:
        lines += [
            "",
            "## Tracing on vs off",
            "",
            "| phase | path | conc. | req/s on | req/s off | throughput cost | p99 on ms | p99 off ms |",
            "|" + " --- |" * 8,
        ]
        for row in result["summary"]["tracing"]:
            lines.append(
                f"| {row['phase']} | {row['path']} | {row['concurrency']} | {row['req_per_s_on']} | {row['req_per_s_off']} "
                f"| {row['throughput_cost']} | {row['p99_on_ms']} | {row['p99_off_ms']} |"
            )
    if result["summary"].get("frontier"):
        lines += [
            "",
            f"## Throughput frontier (open loop, {FIXED_MODEL}, max_tokens=1): the highest rate held with p99 ≤ {FRONTIER_P99_MS:.0f} ms",
            "",
            "| phase | path | held req/s | its p99 ms | first rate missed | its p99 ms |",
            "|" + " --- |" * 6,
        ]
        for row in result["summary"]["frontier"]:
            lines.append(
                f"| {row['phase']} | {row['path']} | {row['held_rate']} | {row['held_p99_ms']} "
                f"| {row['missed_rate']} | {row['missed_p99_ms']} |"
            )
    if result["summary"]["cache"]:
        c = result["summary"]["cache"]
        lines += [
            "",
            "## Response cache (REST unary, concurrency 1)",
            "",
            "| | p50 ms | p99 ms |",
            "| --- | --- | --- |",
            f"| hit | {c.get('hit_p50_ms')} | {c.get('hit_p99_ms')} |",
            f"| miss | {c.get('miss_p50_ms')} | {c.get('miss_p99_ms')} |",
        ]
        if "replay_hit_rate" in c:
            plan = result["plan"]
            lines += [
                "",
                f"Replayed workload ({plan['cache_requests']} requests drawn from {plan['replay_questions']}"
                f" questions, cold cache): hit rate {c['replay_hit_rate']:.1%}, p50 {c['replay_p50_ms']} ms.",
            ]
    for key, stack in (("hops", "separate services"), ("hops_colocated", "co-located services")):
        if not result.get(key):
            continue
        lines += [
            "",
            f"## Where the time goes ({stack}): spans of REST unary requests at concurrency 1 (median)",
            "",
            "| process | span | count | p50 ms |",
            "| --- | --- | --- | --- |",
        ]
        lines += [f"| {h['service']} | {h['span']} | {h['count']} | {h['p50_ms']} |" for h in result[key]]
    for key, stack in (("profile", "separate services"), ("profile_colocated", "co-located services")):
        profiled = result.get(key, {})
        if not profiled.get("inclusive_top"):
            continue
        lines += [
            "",
            f"## Gateway profile, {stack} (py-spy, {profiled['samples']} samples, REST unary load)",
            "",
            "| activity | share of samples % |",
            "| --- | --- |",
        ]
        lines += [f"| {row['activity']} | {row['pct']} |" for row in profiled.get("breakdown", [])]
        lines += ["", "| frame | inclusive % |", "| --- | --- |"]
        lines += [f"| `{row['frame']}` | {row['pct']} |" for row in profiled["inclusive_top"]]
        lines += ["", "| frame | own % |", "| --- | --- |"]
        lines += [f"| `{row['frame']}` | {row['pct']} |" for row in profiled["own_top"]]
    if result.get("vllm_bench"):
        lines += [
            "",
            "## vLLM's serving benchmark against the gateway (`vllm bench serve`, openai-chat, streaming)",
            "",
            "| model | conc. | completed | failed | req/s | output tok/s | TTFT p50 / p99 ms | TPOT p50 / p99 ms"
            " | ITL p50 / p99 ms |",
            "|" + " --- |" * 9,
        ]
        for row in result["vllm_bench"]:
            lines.append(
                f"| {row['model']} | {row['concurrency']} | {row['completed']} | {row['failed']} "
                f"| {row['request_throughput']:.2f} | {row['output_throughput']:.1f} "
                f"| {row['median_ttft_ms']:.1f} / {row['p99_ttft_ms']:.1f} "
                f"| {row['median_tpot_ms']:.1f} / {row['p99_tpot_ms']:.1f} "
                f"| {row['median_itl_ms']:.1f} / {row['p99_itl_ms']:.1f} |"
            )
        lines += ["", f"Command (one per concurrency): `{result['vllm_bench'][0]['command']}`"]
    if result.get("vllm_bench_error"):
        lines += ["", "## vLLM's serving benchmark: failed", "", "```", result["vllm_bench_error"], "```"]
    if result.get("run_times_s"):
        lines += ["", "## Run time of the bench itself", "", "| step | s |", "| --- | --- |"]
        lines += [f"| {step} | {seconds:.1f} |" for step, seconds in result["run_times_s"].items()]
    return "\n".join(lines) + "\n"


def plot(levels: Sequence[Level], path: Path) -> Path:
    """Latency (p50 and p99) and throughput per path against concurrency, tracing on: the
    separate services and, dotted, the co-located ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    shown = ("tracing on", "co-located")
    series = sorted(
        {(lv.phase, lv.path, lv.model) for lv in levels if lv.kind == "latency" and lv.phase in shown},
        key=lambda key: (shown.index(key[0]), key[1], key[2]),
    )
    for phase, path_name, model in series:
        points = sorted(
            (lv.concurrency, lv.p50_ms, lv.p99_ms, lv.req_per_s)
            for lv in levels
            if (lv.phase, lv.path, lv.model, lv.kind) == (phase, path_name, model, "latency")
        )
        xs = [p[0] for p in points]
        style = "-o" if path_name == "direct" else ":^" if phase == "co-located" else "--s"
        label = f"{path_name} ({model})" + (", co-located" if phase == "co-located" else "")
        for axis, column in ((axes[0], 1), (axes[1], 2), (axes[2], 3)):
            axis.plot(xs, [p[column] for p in points], style, label=label)
    for axis, title, unit in (
        (axes[0], "latency p50 (max_tokens=1)", "ms"),
        (axes[1], "latency p99 (max_tokens=1)", "ms"),
        (axes[2], "throughput", "requests/s"),
    ):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent requests")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[2].legend(fontsize=7)
    figure.suptitle("llmesh bench mesh: direct Triton vs through the gateway")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
