"""The chaos scenarios: each does something bad to the running stack, under load, and returns the
figures it measured against their pass criteria. Every wait is bounded."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import redis
from prometheus_client.parser import text_string_to_metric_families

from gateway import audit
from mesh import semconv
from mesh.catalog import default_models, find_model
from tools.chaos.stack import EJECTION_S, MAX_CONCURRENT, MAX_QUEUED, ChaosStack, ChaosStackError

# llmesh's own small model answers in milliseconds: the load is the mesh's, not the engine's.
FAST_MODEL = "llmesh-small"
# SmolLM2 takes a few seconds for 64 tokens: long enough to be in flight during a SIGTERM.
SLOW_MODEL = "smollm2-135m-instruct"
STREAM_TOKENS = 100


@dataclass(frozen=True)
class Row:
    scenario: str
    figure: str
    criterion: str
    passed: bool


@dataclass(frozen=True)
class Answer:
    status: int
    code: str
    seconds: float


def _body(model: str = FAST_MODEL, max_tokens: int = 8, stream: bool = False) -> dict:
    content = "Name a colour."
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


async def chat(http: httpx.AsyncClient, headers: dict | None = None, timeout_s: float = 30.0) -> Answer:
    started = time.perf_counter()
    try:
        response = await http.post("/chat/completions", json=_body(), headers=headers or {}, timeout=timeout_s)
    except httpx.HTTPError as error:
        return Answer(0, type(error).__name__, time.perf_counter() - started)
    code = "" if response.status_code == 200 else (response.json().get("error") or {}).get("code") or ""
    return Answer(response.status_code, code, time.perf_counter() - started)


async def load(
    http: httpx.AsyncClient, clients: int, seconds: float, pause_after_refusal_s: float = 0.05
) -> list[Answer]:
    """Closed-loop clients for ``seconds``; a refused client pauses briefly before its next try."""
    answers: list[Answer] = []
    stop_at = time.monotonic() + seconds

    async def client() -> None:
        while time.monotonic() < stop_at:
            answer = await chat(http)
            answers.append(answer)
            if answer.status != 200:
                await asyncio.sleep(pause_after_refusal_s)

    await asyncio.gather(*(client() for _ in range(clients)))
    return answers


async def serving_again(http: httpx.AsyncClient, since: float, timeout_s: float) -> float | None:
    """Seconds from ``since`` until a request is answered 200, or None within ``timeout_s``."""
    while time.monotonic() - since < timeout_s:
        if (await chat(http, timeout_s=5.0)).status == 200:
            return time.monotonic() - since
        await asyncio.sleep(0.2)
    return None


def _p99_ms(seconds: list[float]) -> float:
    return float(np.percentile(seconds, 99) * 1000) if seconds else float("nan")


def _refusals_by_bucket(metrics_text: str) -> dict[float, float]:
    """The gateway's own histogram of its 429 answers: upper bound (s) -> cumulative count."""
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "llmesh_gateway_request_duration_seconds_bucket" and sample.labels.get("status") == "429":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return buckets


async def overload(stack: ChaosStack) -> list[Row]:
    """3x overload: refusals come at once, accepted requests keep their latency."""
    metrics_url = f"{stack.gateway_url}/metrics"
    async with stack.client() as http, httpx.AsyncClient(timeout=5) as metrics:
        for _ in range(5):  # warm-up: the first requests of a model are slower
            await chat(http)
        baseline = [(await chat(http)).seconds for _ in range(30)]
        before = _refusals_by_bucket((await metrics.get(metrics_url)).text)
        answers = await load(http, clients=3 * (MAX_CONCURRENT + MAX_QUEUED), seconds=10.0)
        after = _refusals_by_bucket((await metrics.get(metrics_url)).text)
    counted = after.get(float("inf"), 0.0) - before.get(float("inf"), 0.0)
    within = after.get(0.05, 0.0) - before.get(0.05, 0.0)
    server_share = within / counted if counted else 0.0
    accepted = [a.seconds for a in answers if a.status == 200]
    refused = [a.seconds for a in answers if a.status == 429 and a.code == "overloaded"]
    other = len(answers) - len(accepted) - len(refused)
    ratio = _p99_ms(accepted) / _p99_ms(baseline)
    p50_refused = float(np.median(refused) * 1000) if refused else float("nan")
    return [
        Row(
            "3x overload: refusals",
            f"{len(refused)} refused of {len(answers)}: {server_share:.1%} answered by the gateway within 50 ms; "
            f"at the client p50 {p50_refused:.1f} ms, p99 {_p99_ms(refused):.1f} ms; {other} other errors",
            ">= 99% within 50 ms at the gateway, no other errors",
            bool(refused) and server_share >= 0.99 and other == 0,
        ),
        Row(
            "3x overload: accepted",
            f"p99 {_p99_ms(accepted):.0f} ms vs {_p99_ms(baseline):.0f} ms unloaded ({ratio:.2f}x)",
            "<= 2x unloaded p99",
            ratio <= 2.0,
        ),
    ]


def _unavailable_generate_calls(metrics_text: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "llmesh_rpc_server_requests_total"
                and labels.get("method", "").endswith("/Generate")
                and labels.get("code") == "UNAVAILABLE"
            ):
                total += sample.value
    return total


async def retry_budget(stack: ChaosStack, requests: int = 40) -> list[Row]:
    """The inference service answers UNAVAILABLE to everything (injected): attempts per request."""
    replicas = ("inference", "inference-2")
    faults = ",".join(f"{replica}:abort=UNAVAILABLE" for replica in replicas)
    headers = {"x-llmesh-fault": faults, "x-llmesh-admin-key": stack.admin_key}

    async def attempts(metrics: httpx.AsyncClient) -> float:
        pages = [(await metrics.get(stack.metrics_url(replica))).text for replica in replicas]
        return sum(_unavailable_generate_calls(page) for page in pages)

    async with httpx.AsyncClient(timeout=5) as metrics, stack.client() as http:
        before = await attempts(metrics)
        answers = [await chat(http, headers) for _ in range(requests)]
        after = await attempts(metrics)
    # One replica was ejected: let it come back before the next scenario.
    await asyncio.sleep(EJECTION_S + 1)
    ratio = (after - before) / requests
    failed_clearly = sum(a.status == 503 for a in answers)
    return [
        Row(
            "upstream 100% UNAVAILABLE (both replicas)",
            f"{after - before:.0f} attempts / {requests} requests = {ratio:.2f}; {failed_clearly} answered 503",
            "<= 1.2",
            ratio <= 1.2 and failed_clearly == requests,
        )
    ]


def _clear_during_outage(answer: Answer) -> bool:
    return answer.status == 200 or (answer.status == 503 and answer.code == "redis_unavailable")


async def _under_load_while(
    stack: ChaosStack,
    fault: Callable[[], Awaitable[None]],
    clients: int = 2,
    record_start: list[tuple[float, Answer]] | None = None,
) -> list[Answer]:
    """Closed-loop clients for as long as ``fault`` runs; with ``record_start``, also each
    answer with the time its request started."""
    async with stack.client() as http:
        answers: list[Answer] = []
        done = asyncio.Event()

        async def client() -> None:
            while not done.is_set():
                started = time.monotonic()
                answer = await chat(http)
                answers.append(answer)
                if record_start is not None:
                    record_start.append((started, answer))
                await asyncio.sleep(0.05)

        tasks = [asyncio.create_task(client()) for _ in range(clients)]
        try:
            await fault()
        finally:
            done.set()
            await asyncio.gather(*tasks)
    return answers


async def redis_outage(stack: ChaosStack, hang_s: float = 4.0) -> list[Row]:
    """Redis frozen (SIGSTOP: connections hang), then killed (SIGKILL: the supervisor restarts it)."""
    gateway_restarts = stack.restarts("gateway")
    redis_pid = stack.pid("redis")

    async def hang() -> None:
        await asyncio.sleep(1.0)
        os.kill(redis_pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(hang_s)
        finally:
            os.kill(redis_pid, signal.SIGCONT)
        await asyncio.sleep(1.0)

    hung = await _under_load_while(stack, hang)
    slowest = max(a.seconds for a in hung)
    unclear = [a for a in hung if not _clear_during_outage(a)]
    rows = [
        Row(
            "Redis hung (SIGSTOP) under load",
            f"{len(hung)} answers, {len(unclear)} unclear, slowest {slowest:.2f} s",
            "every answer 200 or 503 redis_unavailable, slowest <= 3 s",
            not unclear and slowest <= 3.0,
        )
    ]
    os.kill(stack.pid("redis"), signal.SIGKILL)
    killed = time.monotonic()
    async with stack.client() as http:
        recovered = await serving_again(http, killed, timeout_s=30.0)
    rows.append(
        Row(
            "Redis killed, restarted by the supervisor",
            f"serving again after {recovered:.1f} s" if recovered is not None else "not serving after 30 s",
            "<= 10 s, gateway not restarted",
            recovered is not None and recovered <= 10 and stack.restarts("gateway") == gateway_restarts,
        )
    )
    return rows


async def _answered_ids(http: httpx.AsyncClient, stop: asyncio.Event, into: list[tuple[float, Answer, str]]) -> None:
    """A closed-loop client until ``stop``: each answer with the time its request started and
    the id of the completion it answered ('' if refused)."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            response = await http.post("/chat/completions", json=_body(), timeout=30.0)
        except httpx.HTTPError as error:
            into.append((started, Answer(0, type(error).__name__, time.monotonic() - started), ""))
            continue
        body = response.json()
        code = "" if response.status_code == 200 else (body.get("error") or {}).get("code") or ""
        completion = body.get("id", "") if response.status_code == 200 else ""
        into.append((started, Answer(response.status_code, code, time.monotonic() - started), completion))
        await asyncio.sleep(0.05)


def _audited(redis_port: int) -> dict[str, list[dict]]:
    """The audit stream's records by request id, and whether each record was charged."""
    client = redis.Redis(port=redis_port, decode_responses=True, socket_timeout=5)
    by_request: dict[str, list[dict]] = {}
    for entry in audit.redis_entries(client):
        record = entry.record
        record["charged"] = client.hget(audit.ACCOUNTED + record.get("record_id", ""), "charged") == "1"
        by_request.setdefault(record["request_id"], []).append(record)
    return by_request


def _live_pid(stack: ChaosStack, process: str, timeout_s: float = 30.0) -> int:
    """The process's pid once status.json names one that runs (not one killed and not yet
    replaced there, nor a zombie)."""
    deadline = time.monotonic() + timeout_s
    while True:
        pid = stack.pid(process)
        try:
            if Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
                return pid
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise ChaosStackError(f"{process} is not running after {timeout_s:.0f} s")
        time.sleep(0.1)


async def redis_accounting(stack: ChaosStack, load_s: float = 6.0) -> list[Row]:
    """Scenario 8's "nothing already accepted is lost": under load, Redis frozen (SIGSTOP) for 2 s,
    then killed while frozen (what it held unanswered is gone) and restarted by the supervisor.
    The chaos stack's rate limits fail open, so the gateway keeps answering meanwhile; every
    request answered from the freeze on must be audited and charged exactly once afterwards."""
    redis_pid = await asyncio.to_thread(_live_pid, stack, "redis")
    redis_port = stack.status()["ports"]["redis"]
    answers: list[tuple[float, Answer, str]] = []
    stop = asyncio.Event()
    async with stack.client() as http:
        clients = [asyncio.create_task(_answered_ids(http, stop, answers)) for _ in range(2)]
        try:
            await asyncio.sleep(1.0)
            frozen = time.monotonic()
            os.kill(redis_pid, signal.SIGSTOP)
            await asyncio.sleep(2.0)
            restarts = stack.restarts("redis")
            os.kill(redis_pid, signal.SIGKILL)
            await asyncio.to_thread(stack.wait_restarted, "redis", restarts)
            back = time.monotonic()
            await asyncio.sleep(max(0.0, load_s - (back - frozen)))
        finally:
            stop.set()
            await asyncio.gather(*clients)
    accepted = {completion for started, answer, completion in answers if started >= frozen and completion}
    during = sum(1 for started, answer, completion in answers if frozen <= started < back and completion)
    unclear = sum(not _clear_during_outage(answer) for _, answer, _ in answers)
    # Bounded: the gateway writes what it kept once Redis answers, with a backoff of at most 2 s.
    deadline = time.monotonic() + 30.0
    while True:
        records = await asyncio.to_thread(_audited, redis_port)
        if accepted <= records.keys() or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    settled_s = time.monotonic() - back
    missing = len(accepted - records.keys())
    twice = sum(len(records[c]) > 1 for c in accepted & records.keys())
    uncharged = sum(not records[c][0]["charged"] for c in accepted & records.keys())
    return [
        Row(
            "Redis frozen then killed: nothing accepted lost",
            f"{len(accepted)} answered from the freeze on ({during} while Redis was away, outage "
            f"{back - frozen:.1f} s), {unclear} unclear answers; {missing} not audited, {uncharged} not charged, "
            f"{twice} audited twice ({settled_s:.1f} s after Redis was back)",
            "every one audited and charged exactly once; every answer 200 or 503 redis_unavailable",
            during > 0 and missing == 0 and uncharged == 0 and twice == 0 and unclear == 0,
        )
    ]


async def sigkill_service(stack: ChaosStack, process: str = "inference") -> list[Row]:
    """SIGKILL a process of the stack: the stack serves again (the other replica, if any), and
    the supervisor restarts the process."""
    restarts = stack.restarts(process)
    os.kill(stack.pid(process), signal.SIGKILL)
    killed = time.monotonic()
    async with stack.client() as http:
        recovered = await serving_again(http, killed, timeout_s=60.0)
    restarted = await asyncio.to_thread(stack.wait_restarted, process, restarts)
    restarted_s = time.monotonic() - killed
    return [
        Row(
            f"SIGKILL {process} (1 of 2 replicas)",
            (f"serving again after {recovered:.1f} s" if recovered is not None else "not serving after 60 s")
            + (f"; restarted by the supervisor within {restarted_s:.1f} s" if restarted else "; not restarted"),
            "<= 30 s, restarted",
            recovered is not None and recovered <= 30 and restarted,
        )
    ]


async def replica_killed(stack: ChaosStack, seconds: float = 10.0) -> list[Row]:
    """SIGKILL one of two inference replicas under load: errors stop within 2 s (ejection),
    every request ends by its deadline."""
    killed_at: list[float] = []

    async def kill() -> None:
        await asyncio.sleep(2.0)
        os.kill(stack.pid("inference-2"), signal.SIGKILL)
        killed_at.append(time.monotonic())
        await asyncio.sleep(seconds - 2.0)

    timed: list[tuple[float, Answer]] = []
    answers = await _under_load_while(stack, kill, clients=2, record_start=timed)
    # Its second ejection lasts twice as long.
    await asyncio.sleep(2 * EJECTION_S + 1)
    settle = killed_at[0] + 2.0
    after = [answer for at, answer in timed if at >= settle]
    errors = sum(answer.status != 200 for answer in after)
    rate = errors / len(after) if after else 1.0
    slowest = max(answer.seconds for answer in answers)
    return [
        Row(
            "SIGKILL 1 of 2 inference replicas",
            f"{errors} errors of {len(after)} from 2 s after the kill ({rate:.1%}); slowest {slowest:.2f} s",
            "< 1% errors; slowest <= deadline (30 s) + 0.1 s",
            rate < 0.01 and slowest <= 30.1,
        )
    ]


def _ejections(metrics_text: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == "llmesh_replica_ejections_total"
    )


async def replica_unavailable(stack: ChaosStack, requests: int = 60) -> list[Row]:
    """One of two inference replicas answers UNAVAILABLE (injected into inference-2 only)."""
    headers = {"x-llmesh-fault": "inference-2:abort=UNAVAILABLE", "x-llmesh-admin-key": stack.admin_key}
    metrics_url = f"{stack.gateway_url}/metrics"
    async with stack.client() as http, httpx.AsyncClient(timeout=5) as metrics:
        before = _ejections((await metrics.get(metrics_url)).text)
        answers = [await chat(http, headers) for _ in range(requests)]
        ejections = _ejections((await metrics.get(metrics_url)).text) - before
    await asyncio.sleep(EJECTION_S + 1)
    errors = [i for i, answer in enumerate(answers) if answer.status != 200]
    # An ejection ends after its time and the replica is tried again (ejected for longer if it
    # still fails): each ejection may cost up to 5 errors, plus one sent while the fifth was
    # being recorded.
    return [
        Row(
            "1 of 2 replicas UNAVAILABLE",
            f"{len(errors)} failed of {requests} ({len(errors) / requests:.0%}, last at #{errors[-1] + 1 if errors else 0});"
            f" {ejections:.0f} ejection(s) by the gateway",
            "ejected, within 5 errors (+1) per ejection",
            ejections >= 1 and len(errors) <= 6 * ejections,
        )
    ]


def _version_requests(metrics_text: str, model: str, version: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == "llmesh_inference_version_requests_total"
        and sample.labels.get("model") == model
        and sample.labels.get("version") == version
    )


async def model_swap(stack: ChaosStack, hold_s: float = 4.0) -> list[Row]:
    """Under 2 clients: version 2 of llmesh-small loaded beside version 1, 50% then 100% of its
    traffic shifted to it, then rolled back (all through the admin API, as `llmesh models` does)."""
    base = f"/admin/models/{FAST_MODEL}"
    steps: dict[str, float] = {}
    rollback: dict = {}
    served_v2: list[float] = []

    async def swap() -> None:
        async with (
            httpx.AsyncClient(
                base_url=stack.gateway_url, headers={"authorization": f"Bearer {stack.admin_key}"}, timeout=340
            ) as admin,
            httpx.AsyncClient(timeout=5) as metrics,
        ):

            async def v2_requests() -> float:
                texts = [(await metrics.get(stack.metrics_url(p))).text for p in ("inference", "inference-2")]
                return sum(_version_requests(text, FAST_MODEL, "2") for text in texts)

            async def step(name: str, method: str, path: str, body: dict | None = None) -> dict:
                started = time.monotonic()
                response = await admin.request(method, base + path, json=body)
                steps[name] = time.monotonic() - started
                if response.status_code != 200:
                    raise RuntimeError(f"{name}: {response.status_code} {response.text}")
                return response.json()

            await asyncio.sleep(1.0)
            await step("load", "POST", "/versions", {"version": 2})
            before = await v2_requests()
            await asyncio.sleep(hold_s)
            await step("50%", "PUT", "/traffic", {"percent": {"1": 50, "2": 50}})
            await asyncio.sleep(hold_s)
            await step("100%", "PUT", "/traffic", {"percent": {"2": 100}})
            await asyncio.sleep(hold_s)
            served_v2.append(await v2_requests() - before)
            rollback.update(await step("rollback", "POST", "/rollback"))
            await asyncio.sleep(1.0)

    try:
        answers = await _under_load_while(stack, swap)
    except RuntimeError as error:
        return [Row("model version swap and rollback under load", f"not done: {error}", "-", False)]
    failed = [answer for answer in answers if answer.status != 200]
    codes = ", ".join(sorted({f"{a.status} {a.code}".strip() for a in failed}))
    return [
        Row(
            "model version swap (load v2, 50%, 100%) and rollback under 2 clients",
            f"{len(failed)} failed of {len(answers)}{f' ({codes})' if codes else ''}; version 2 answered "
            f"{served_v2[0]:.0f}; load {steps['load']:.1f} s",
            "0 failed",
            not failed and served_v2[0] > 0,
        ),
        Row(
            "model rollback",
            f"all traffic on version 1 after {rollback['traffic_seconds']:.1f} s; version 2 unloaded, "
            f"rollback done after {steps['rollback']:.1f} s",
            "< 30 s, version 2 unloaded",
            steps["rollback"] < 30 and rollback["unloaded"] == [2],
        ),
    ]


async def _stream(http: httpx.AsyncClient, first_chunk: asyncio.Event) -> tuple[bool, float]:
    """Whether the stream ended with [DONE] and no error event, and when it ended."""
    try:
        ok = await _stream_ok(http, first_chunk)
    finally:
        # A stream that failed before its first chunk must not keep the scenario waiting.
        first_chunk.set()
    return ok, time.monotonic()


async def _stream_ok(http: httpx.AsyncClient, first_chunk: asyncio.Event) -> bool:
    body = _body(SLOW_MODEL, max_tokens=STREAM_TOKENS, stream=True)
    try:
        async with http.stream("POST", "/chat/completions", json=body, timeout=60) as response:
            if response.status_code != 200:
                return False
            last = ""
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    first_chunk.set()
                    last = line
                    if '"error"' in line:
                        return False
            return last == "data: [DONE]"
    except httpx.HTTPError:
        return False


async def sigterm_gateway(stack: ChaosStack, streams: int = MAX_CONCURRENT) -> list[Row]:
    """SIGTERM to the gateway while streams are in flight: they finish; the supervisor restarts it."""
    # An inference replica killed just before may still be ejected: let it come back.
    await asyncio.sleep(2 * EJECTION_S + 1)
    async with stack.client() as http:
        started = [asyncio.Event() for _ in range(streams)]
        tasks = [asyncio.create_task(_stream(http, event)) for event in started]
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in started)), timeout=90)
        restarts = stack.restarts("gateway")
        os.kill(stack.pid("gateway"), signal.SIGTERM)
        stopped = time.monotonic()
        completed = await asyncio.gather(*tasks)
        # The process that drained is gone once the supervisor has started the next one.
        restarted = await asyncio.to_thread(stack.wait_restarted, "gateway", restarts)
        recovered = await serving_again(http, stopped, timeout_s=60.0) if restarted else None
    failed = sum(not ok for ok, _ in completed)
    past = min(ended for _, ended in completed) - stopped
    failed_before = "; a stream ended before the SIGTERM" if past < 0 else ""
    return [
        Row(
            "SIGTERM gateway with streams in flight",
            f"{failed} of {streams} in-flight streams failed (they ran {past:.1f} s+ past the SIGTERM){failed_before}",
            "0 failed, all in flight at the SIGTERM",
            failed == 0 and past >= 0,
        ),
        Row(
            "gateway back after SIGTERM (supervisor)",
            f"serving again after {recovered:.1f} s" if recovered is not None else "not serving after 60 s",
            "<= 30 s",
            recovered is not None and recovered <= 30,
        ),
    ]


# A question SmolLM2 answers at length: its generations outlast the clients that leave them.
LONG_QUESTION = "Write a long, detailed story about a lighthouse keeper and the sea, with many chapters."


def _engine_running(metrics_text: str, model: str) -> float:
    for family in text_string_to_metric_families(metrics_text):
        if family.name == semconv.METRIC_ENGINE_RUNNING:
            return sum(sample.value for sample in family.samples if sample.labels.get("model") == model)
    return 0.0


async def client_disconnects(stack: ChaosStack, clients: int = MAX_CONCURRENT // 2) -> list[Row]:
    """Clients that leave in mid-unary and in mid-stream (as many of each as the stack admits
    at once): the engine stops generating for them (Triton's engine gauge of running requests
    falls back to zero)."""
    metrics = f"http://127.0.0.1:{stack.status()['ports']['triton_metrics']}/metrics"
    body = {"model": SLOW_MODEL, "messages": [{"role": "user", "content": LONG_QUESTION}], "max_tokens": 400}
    async with stack.client(timeout_s=120) as http, httpx.AsyncClient(timeout=5) as probe:

        async def running() -> float:
            return _engine_running((await probe.get(metrics)).text, SLOW_MODEL)

        async def unary() -> None:
            await http.post("/chat/completions", json=body)

        async def stream() -> None:
            async with http.stream("POST", "/chat/completions", json={**body, "stream": True}) as response:
                async for _ in response.aiter_lines():
                    pass

        tasks = [asyncio.create_task(call()) for call in [unary] * clients + [stream] * clients]
        peak, deadline = 0.0, time.monotonic() + 30
        while peak < 2 * clients and time.monotonic() < deadline:
            peak = max(peak, await running())
            await asyncio.sleep(0.2)
        # The clients leave: their connections close with the cancelled requests.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        left, drained, still = time.monotonic(), None, peak
        while time.monotonic() < left + 15:
            still = await running()
            if still == 0:
                drained = time.monotonic() - left
                break
            await asyncio.sleep(0.2)
    return [
        Row(
            "clients disconnect mid-unary and mid-stream",
            f"{peak:.0f} of {2 * clients} requests running in the engine; "
            + (
                f"0 running {drained:.1f} s after the clients left"
                if drained is not None
                else f"{still:.0f} still running after 15 s"
            ),
            "all running, then 0 within 5 s",
            peak >= 2 * clients and drained is not None and drained <= 5,
        )
    ]


def _eos_token_id(model: str) -> int:
    """The token whose generation ends an answer, from the model's own directory."""
    spec = find_model(default_models(), model)
    if spec is None:
        raise ChaosStackError(f"{model} is not in the catalog")
    for name in ("generation_config.json", "config.json"):
        path = spec.resolved_dir() / name
        if path.exists():
            eos = json.loads(path.read_text()).get("eos_token_id")
            if eos is not None:
                return int(eos[0] if isinstance(eos, list) else eos)
    raise ChaosStackError(f"no eos_token_id in {spec.resolved_dir()}")


async def long_stream(stack: ChaosStack, min_s: float = 60.0) -> list[Row]:
    """Scenario 7: one streamed SmolLM2 completion that fills the model's context, its end of
    answer banned (logit_bias) so that it runs to max_tokens, a minute or more: nothing in the
    path may cut it (the unary deadline cut every stream at 30 s)."""
    messages = [{"role": "user", "content": LONG_QUESTION}]
    async with stack.client(timeout_s=60) as http:
        listed = (await http.get("/models")).json()["data"]
        context = next(entry["context_length"] for entry in listed if entry["id"] == SLOW_MODEL)
        probe = await http.post("/chat/completions", json={"model": SLOW_MODEL, "messages": messages, "max_tokens": 1})
        probe.raise_for_status()
        max_tokens = context - probe.json()["usage"]["prompt_tokens"]
        body = {
            "model": SLOW_MODEL,
            "messages": messages,
            "max_tokens": max_tokens,
            "stream": True,
            # Greedy: the same answer each run (a sampled one once tripped the output guard).
            "temperature": 0,
            "logit_bias": {str(_eos_token_id(SLOW_MODEL)): -100},
        }
        started = time.monotonic()
        first_s, last_at, longest_gap, chunks = None, started, 0.0, 0
        finish, error, done, status = None, "", False, 0
        # A read timeout per chunk only: the stream as a whole lasts as long as it needs.
        async with http.stream(
            "POST", "/chat/completions", json=body, headers={"cache-control": "no-cache"}, timeout=httpx.Timeout(60.0)
        ) as response:
            status = response.status_code
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                now = time.monotonic()
                longest_gap, last_at = max(longest_gap, now - last_at), now
                if line == "data: [DONE]":
                    done = True
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    error = event["error"].get("code") or event["error"].get("message", "")
                    continue
                if first_s is None:
                    first_s = now - started
                chunks += 1
                for choice in event.get("choices", []):
                    finish = choice.get("finish_reason") or finish
        took = time.monotonic() - started
    cut = f"cut: {error}" if error else ("not cut" if done else "ended without [DONE]")
    return [
        Row(
            "60 s stream (SmolLM2, end of answer banned)",
            f"HTTP {status}, {cut}; {chunks} chunks of max_tokens {max_tokens} in {took:.1f} s "
            f"(first after {first_s or 0:.1f} s, longest gap {longest_gap:.1f} s), finish_reason {finish}",
            f"never cut by a timeout (finish_reason length, or content_filter: the output guard ended it), "
            f">= {min_s:.0f} s",
            status == 200 and done and not error and finish in ("length", "content_filter") and took >= min_s,
        )
    ]


def _outcome(answer: Answer) -> str:
    """An answer as its status and code, or the client's error when there was no answer."""
    return answer.code if answer.status == 0 else f"{answer.status} {answer.code}".strip()


@dataclass(frozen=True)
class Timed:
    """An answer with when its request started, and which model answered it."""

    started: float
    answer: Answer
    model: str


async def _timed_chat(http: httpx.AsyncClient, body: dict, into: list[Timed]) -> None:
    started = time.monotonic()
    try:
        response = await http.post("/chat/completions", json=body)
    except httpx.HTTPError as error:
        into.append(Timed(started, Answer(0, type(error).__name__, time.monotonic() - started), ""))
        return
    code = "" if response.status_code == 200 else (response.json().get("error") or {}).get("code") or ""
    answer = Answer(response.status_code, code, time.monotonic() - started)
    into.append(Timed(started, answer, response.headers.get("x-llmesh-model", "")))


async def _open_loop(http: httpx.AsyncClient, body: dict, rate: float, count: int, into: list[Timed]) -> float:
    """``count`` requests sent ``1 / rate`` s apart whatever the answers (an open loop: a slow
    stack does not slow the arrivals), each on its own; the seconds the sending took."""
    started = time.monotonic()
    tasks = []
    for i in range(count):
        await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
        tasks.append(asyncio.create_task(_timed_chat(http, body, into)))
    sent_s = time.monotonic() - started
    await asyncio.gather(*tasks)
    return sent_s


async def model_unload(
    stack: ChaosStack, rate: float = 50.0, seconds: float = 24.0, unload_at_s: float = 4.0, reload_after_s: float = 6.0
) -> list[Row]:
    """Scenario 1, second half: requests for llmesh-small at ``rate`` per second (open loop)
    while Triton unloads it (explicit model control, its repository API), then loads it again:
    the inference service fails over along the chain, then its breaker skips the model until a
    probe finds it back. The gateway's readiness is watched throughout."""
    triton = f"http://127.0.0.1:{stack.status()['ports']['triton_http']}/v2/repository/models/{FAST_MODEL}"
    body = _body(FAST_MODEL, max_tokens=1)
    answers: list[Timed] = []
    marks: dict[str, float] = {}
    not_ready: list[int] = []
    stop = asyncio.Event()
    async with (
        stack.client(timeout_s=40, connections=1000) as http,
        httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=600.0)) as admin,
    ):
        for _ in range(5):  # warm-up
            await _timed_chat(http, body, [])

        async def readiness() -> None:
            while not stop.is_set():
                try:
                    response = await admin.get(f"{stack.gateway_url}/readyz", timeout=5)
                    if response.status_code != 200:
                        not_ready.append(response.status_code)
                except httpx.HTTPError:
                    not_ready.append(0)
                await asyncio.sleep(0.5)

        async def unload_then_load() -> None:
            await asyncio.sleep(unload_at_s)
            marks["unload"] = time.monotonic()
            (await admin.post(f"{triton}/unload")).raise_for_status()
            marks["unloaded"] = time.monotonic()
            await asyncio.sleep(reload_after_s)
            marks["load"] = time.monotonic()
            (await admin.post(f"{triton}/load")).raise_for_status()
            marks["loaded"] = time.monotonic()

        watcher = asyncio.create_task(readiness())
        marks["start"] = time.monotonic()
        lifecycle = asyncio.create_task(unload_then_load())
        try:
            sent_s = await _open_loop(http, body, rate, int(rate * seconds), answers)
            marks["load_end"] = time.monotonic()
            # The model back before the next scenario; its load is bounded by the scenario's.
            await lifecycle
        except httpx.HTTPError as error:
            return [Row("Triton unloads the serving model", f"not done: {error!r}", "-", False)]
        finally:
            stop.set()
            lifecycle.cancel()
            await asyncio.gather(watcher, lifecycle, return_exceptions=True)
    settle = marks["unload"] + 2.0
    after = [t for t in answers if t.started >= settle]
    errors = [t for t in after if t.answer.status != 200]
    rate_after = len(errors) / len(after) if after else 1.0
    codes = ", ".join(f"{n} {code}" for code, n in sorted(Counter(_outcome(t.answer) for t in errors).items()))
    early = sum(t.answer.status != 200 for t in answers if marks["unload"] <= t.started < settle)
    slowest = max(t.answer.seconds for t in answers)
    deadline_s = 30.0
    served_by: dict[str, int] = {}
    for t in answers:
        if t.started >= marks["unload"] and t.answer.status == 200:
            served_by[t.model] = served_by.get(t.model, 0) + 1
    back = sum(t.model == FAST_MODEL for t in answers if t.started >= marks.get("loaded", float("inf")))
    offered = len(answers) / sent_s
    # Every answer, for a closer look (a timeline of latencies and codes).
    (stack.run_dir / "model-unload.json").write_text(
        json.dumps(
            {
                "marks": {name: at - marks["start"] for name, at in marks.items()},
                "answers": [
                    [t.started - marks["start"], t.answer.status, t.answer.code, t.answer.seconds, t.model]
                    for t in answers
                ],
                "not_ready": not_ready,
            }
        )
    )
    reloaded = (
        f"loaded again {marks['loaded'] - marks['load']:.1f} s after its load began"
        + (f", {back} answered by it after" if marks["loaded"] < marks["load_end"] else ", after the load ended")
        if "loaded" in marks
        else "not loaded again"
    )
    return [
        Row(
            f"Triton unloads the serving model ({FAST_MODEL}) under {rate:.0f} requests/s",
            f"{len(answers)} requests ({offered:.1f}/s offered); {len(errors)} errors of {len(after)} from 2 s after "
            f"the unload ({rate_after:.1%}{f': {codes}' if codes else ''}), {early} in the 2 s before; answered by "
            + ", ".join(f"{model} {n}" for model, n in sorted(served_by.items()))
            + f" from the unload on; slowest {slowest:.2f} s; {reloaded}",
            f"< 1% errors after 2 s; slowest <= deadline ({deadline_s:.0f} s) + 0.1 s",
            bool(after) and rate_after < 0.01 and slowest <= deadline_s + 0.1,
        ),
        Row(
            "gateway readiness while a model is unloaded",
            f"{sum(c != 0 for c in not_ready)} not-ready answers of /readyz, {not_ready.count(0)} probes not answered "
            "within 5 s (a loaded machine)",
            "never answered not ready (the other models serve)",
            not any(not_ready),
        ),
    ]


# In the order they run: the ones that restart processes last.
SCENARIOS: dict[str, Callable[[ChaosStack], Awaitable[list[Row]]]] = {
    "overload": overload,
    "retry-budget": retry_budget,
    "replica-unavailable": replica_unavailable,
    "model-swap": model_swap,
    "disconnects": client_disconnects,
    "long-stream": long_stream,
    "replica-kill": replica_killed,
    "redis": redis_outage,
    "redis-accounting": redis_accounting,
    "sigkill": sigkill_service,
    "sigterm": sigterm_gateway,
    "model-unload": model_unload,
}

# How long a scenario may take (BOUND_S unless named): the long stream runs a minute or more
# by design, and the model unloaded is loaded again before its scenario ends.
BOUND_S = 180.0
BOUNDS_S = {"long-stream": 420.0, "model-unload": 420.0}

# Scenarios whose stack is set otherwise than the suite's, each run on a stack of its own: an
# open loop of 50 requests/s keeps several in flight at once, which the suite's admission
# limits (2, for the overload scenario) would refuse (256 are the settings' defaults), and is
# 3000 requests a minute, over the tenant's default rate limit (600).
STACK_ENV = {
    "model-unload": {
        "LLMESH_MAX_CONCURRENT_REQUESTS": "256",
        "LLMESH_MAX_QUEUED_REQUESTS": "256",
        "LLMESH_TENANT_REQUESTS_PER_MINUTE": "100000",
        "LLMESH_TENANT_TOKENS_PER_MINUTE": "10000000",
    }
}
