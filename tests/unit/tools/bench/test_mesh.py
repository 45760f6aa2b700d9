"""llmesh bench mesh's arithmetic: closed loops count what they sent and what failed, the
percentiles are nearest-rank, and the summary compares each level with its own phase's direct
baseline."""

import asyncio

from tools.bench.engine import Stream
from tools.bench.mesh import (
    PHASES,
    Level,
    Plan,
    _activity,
    closed_loop,
    frontier,
    markdown,
    open_loop,
    percentile_ms,
    steps,
    summary,
)


def test_nearest_rank_percentiles():
    values = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert (percentile_ms(values, 0.5), percentile_ms(values, 0.99), percentile_ms([], 0.5)) == (50.0, 99.0, 0.0)


async def test_a_closed_loop_sends_the_count_and_counts_failures():
    in_flight = peak = 0

    async def one(index):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.001)
        in_flight -= 1
        if index % 10 == 0:
            raise RuntimeError("refused")
        return Stream(1, 0.001, 0.001)

    done, errors, wall = await closed_loop(one, 4, 40)
    assert (len(done), errors, peak) == (36, 4, 4) and wall > 0


def _level(phase, path, p50, p99, requests, wall=1.0, model="llmesh-small"):
    return Level(phase, path, model, "latency", 1, requests, 0, wall, p50, p50, p99, p50, 0.0, requests)


def test_the_summary_is_against_the_same_phase_direct_baseline():
    levels = [
        _level("tracing on", "direct", 10, 20, 100),
        _level("tracing on", "rest", 30, 60, 25),
        _level("tracing off", "direct", 8, 16, 120),
        _level("tracing off", "rest", 20, 40, 40),
    ]
    added = {(row["phase"], row["path"]): row for row in summary(levels)["added"]}
    on = added[("tracing on", "rest")]
    assert (on["added_p50_ms"], on["added_p99_ms"], on["p99_ratio"], on["throughput_share"]) == (20, 40, 3.0, 0.25)
    assert added[("tracing off", "rest")]["added_p50_ms"] == 12
    tracing = {row["path"]: row for row in summary(levels)["tracing"]}
    assert tracing["rest"]["throughput_cost"] == round(1 - 25 / 40, 3)


def test_each_tracing_off_phase_is_compared_with_its_own_twin():
    levels = [
        _level("tracing on", "rest", 30, 60, 25),
        _level("tracing 10%", "rest", 22, 44, 38),
        _level("tracing off", "rest", 20, 40, 40),
        _level("co-located", "rest", 12, 20, 50),
        _level("co-located, tracing off", "rest", 10, 18, 55),
    ]
    cost = {row["phase"]: row["throughput_cost"] for row in summary(levels)["tracing"]}
    assert cost == {
        "tracing on": round(1 - 25 / 40, 3),
        "tracing 10%": round(1 - 38 / 40, 3),
        "co-located": round(1 - 50 / 55, 3),
    }


def test_the_progress_total_counts_each_phase_s_levels():
    plan = Plan(concurrencies=(1, 8), stream_concurrencies=(1,), rates=(10, 20, 40))
    assert {phase.name: steps(plan, phase.scope) for phase in PHASES} == {
        "tracing on": 7 * 2 + 2 + 2 * 3 + 3,
        "tracing 10%": 2 * 2,
        "tracing off": 2 * 2,
        "co-located": 4 * 2 + 2 + 2 * 3,
        "co-located, tracing off": 2 * 2,
    }


async def test_an_open_loop_sends_at_its_rate_without_waiting_for_answers():
    in_flight = peak = 0

    async def one(index):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        if index == 3:
            raise RuntimeError("refused")
        return Stream(0.05, 0.05, 0.05)

    done, errors, wall = await open_loop(one, 200, 20)
    # 20 requests 5 ms apart, each taking 50 ms: about ten overlap, where a closed loop of one would not.
    assert (len(done), errors) == (19, 1) and peak >= 5 and wall < 1.0


def test_the_frontier_is_the_highest_rate_held_within_the_p99_limit():
    def at(path, rate, p99, errors=0):
        return Level("co-located", path, "llmesh-small", "open-loop", rate, 50, errors, 1.0, 5, 5, p99, 5, 0.0, 50)

    levels = [
        at("direct", 50, 20),
        at("direct", 100, 40),
        at("rest", 50, 60),
        at("rest", 100, 250),
        at("rest", 200, 900, 3),
    ]
    rows = {row["path"]: row for row in frontier(levels)}
    assert (rows["direct"]["held_rate"], rows["direct"]["missed_rate"]) == (100, None)
    assert (rows["rest"]["held_rate"], rows["rest"]["missed_rate"], rows["rest"]["missed_p99_ms"]) == (50, 100, 250)


def test_profile_samples_go_to_their_innermost_known_component():
    request = ["main (gateway/__main__.py:82)", "Pipeline.chat (gateway/pipeline.py:150)"]
    assert _activity([*request, "UnaryUnaryCall._invoke (aio/_call.py:300)"]) == "gRPC client calls to the services"
    assert _activity([*request, "Redis.execute_command (asyncio/client.py:600)"]) == "Redis client (tenancy, audit)"
    assert _activity(request) == "gateway code (pipeline, guard, formats, edges)"
    assert _activity(request[:1]) == "event loop and sockets (waiting included)"


def test_auto_levels_send_fewer_requests_but_at_least_two_per_client():
    plan = Plan(requests=160, auto_requests=64)
    assert (plan.count(1), plan.count(1, "auto"), plan.count(32, "auto"), plan.count(64)) == (160, 64, 64, 256)


def test_the_report_shows_vllm_s_figures_and_the_run_s_own_time():
    vllm_row = {
        "model": "smollm2-student",
        "concurrency": 8,
        "completed": 32,
        "failed": 0,
        "request_throughput": 3.5,
        "output_throughput": 101.25,
        "median_ttft_ms": 40.0,
        "p99_ttft_ms": 90.0,
        "median_tpot_ms": 12.0,
        "p99_tpot_ms": 20.0,
        "median_itl_ms": 11.0,
        "p99_itl_ms": 30.0,
        "command": "vllm bench serve --backend openai-chat",
    }
    result = {
        "plan": {},
        "levels": [],
        "summary": {"added": [], "tracing": [], "cache": {}},
        "vllm_bench": [vllm_row],
        "run_times_s": {"triton start": 61.25, "total": 480.0},
    }
    text = markdown(result)
    assert "| smollm2-student | 8 | 32 | 0 | 3.50 | 101.2 | 40.0 / 90.0 | 12.0 / 20.0 | 11.0 / 30.0 |" in text
    assert "| triton start | 61.2 |" in text and "| total | 480.0 |" in text
