"""`llmesh router eval|train|calibrate|bench`: measure, train and tune the router.

Progress and notes go to stderr; with --json, stdout holds exactly one JSON object.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from mesh.settings import REPO_ROOT, load_settings
from services.router.settings import RouterSettings

app = typer.Typer(help="evaluate, train, calibrate and benchmark the router", no_args_is_help=True)
err = Console(stderr=True)
DEFAULT_PLOT = REPO_ROOT / ".run/router/eval.png"
# Which setting holds each swept policy's threshold, and how a threshold maps to its value.
THRESHOLD_SETTINGS = {
    "perplexity": ("LLMESH_PERPLEXITY_THRESHOLD", lambda t: t),
    "cascade": ("LLMESH_CASCADE_MIN_LOGPROB", lambda t: -t),
    "learned": ("LLMESH_LEARNED_THRESHOLD", lambda t: t),
    "cost-aware": ("LLMESH_COST_MIN_GAIN_PER_CURRENCY", lambda t: t),
    "random": ("LLMESH_RANDOM_LARGE_SHARE", lambda t: 1.0 - t),
}


def _queries(settings: RouterSettings):
    from services.router import evaldata

    key = evaldata.artifacts_key(settings.models, settings.max_score_tokens)
    queries = evaldata.load_cached(key)
    if queries is not None:
        err.print(f"eval data: {len(queries)} held-out queries from {evaldata.CACHE_PATH} (cache key {key})")
        return queries, key
    err.print(
        "eval data: scoring the held-out queries under every model, in-process with transformers ..."
    )
    queries = evaldata.build(settings.models, settings.small_model, settings.max_score_tokens,
                             progress=lambda rows: tqdm(rows, file=sys.stderr, desc="scoring"))  # fmt: skip
    evaldata.save(queries, key)
    return queries, key


def _learned(settings: RouterSettings, queries, key: str):
    """The configured artifact if it was trained on this data's fit half, else a fresh fit."""
    from services.router import evaluate, learned

    try:
        router = learned.load_router(settings.learned_router_path)
        if router.trained_on.get("data_key") == key:
            err.print(f"learned router: {router.version} from {settings.learned_router_path}")
            return router
        err.print(f"learned router {router.version} was trained on other data; fitting one in memory")
    except FileNotFoundError:
        err.print("no learned router artifact; fitting one in memory (`llmesh router train` saves one)")
    return evaluate.train_router(queries, settings, key)


@app.command("eval")
def eval_(
    as_json: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
    plot: Path = typer.Option(DEFAULT_PLOT, help="PNG of quality against large-model share"),
) -> None:
    """Sweep every policy's threshold on the held-out report half; RouteLLM's metrics and cost."""
    from services.router import evaluate, routellm

    settings = load_settings(RouterSettings)
    queries, key = _queries(settings)
    router = _learned(settings, queries, key)
    _, report = evaluate.split(queries)
    err.print(f"reporting on {len(report)} queries never used for training or calibration")
    results = evaluate.evaluate(report, settings, router)
    baselines = evaluate.baselines(report, settings)
    small, large = (baselines[m]["mean_quality"] for m in (settings.small_model, settings.large_model))
    if large <= small:
        err.print(
            f"[yellow]warning:[/] the large model's mean quality ({large:.3f}) is not above the small "
            f"model's ({small:.3f}); PGR divides by their difference, so the metrics measure routing to "
            "the worse model"
        )
    random_apgr = results["random"].apgr
    sanity = "ok" if abs(random_apgr - 0.5) < 0.05 else "FAILED"
    err.print(f"sanity check: random router APGR {random_apgr:.3f} (expected 0.5 +/- 0.05): {sanity}")
    oracle = evaluate.oracle(report, settings)
    _plot(results, baselines, oracle, settings, plot)
    err.print(f"plot: {plot}")
    policies = {}
    for name, r in results.items():
        variable, to_setting = THRESHOLD_SETTINGS[name]
        policies[name] = {**r.summary(), "setting": f"{variable}={to_setting(r.threshold):.6g}"}
    out = {
        "policies": policies,
        "baselines": baselines,
        "queries": len(report),
        "signals": "in-process with transformers, as the engine's prompt log-probabilities",
        "random_sanity": {"apgr": round(random_apgr, 4), "ok": sanity == "ok"},
        # Not a policy: the bound a router that knew each query's true gain would reach.
        "oracle": {
            "apgr": round(routellm.apgr(oracle), 4),
            "cpt50": routellm.cpt(oracle, 0.5),
            "cpt80": routellm.cpt(oracle, 0.8),
        },
        "plot": str(plot),
    }
    if as_json:
        print(json.dumps(out))
        return
    table = Table(title=f"router evaluation ({len(report)} held-out queries)")
    for column in ("policy", "APGR", "CPT(50%)", "CPT(80%)", "threshold", "large share", "PGR", "cost / 1k req"):
        table.add_column(column, justify="right" if column != "policy" else "left")
    for name, r in results.items():
        table.add_row(name, f"{r.apgr:.3f}", f"{r.cpt50:.1%}", f"{r.cpt80:.1%}", f"{r.threshold:.4g}",
                      f"{r.share:.1%}", f"{r.pgr:.2f}", f"{r.cost_per_1k_requests:.4f}")  # fmt: skip
    table.add_row("oracle (bound)", f"{routellm.apgr(oracle):.3f}", f"{routellm.cpt(oracle, 0.5):.1%}",
                  f"{routellm.cpt(oracle, 0.8):.1%}", "", "", "", "")  # fmt: skip
    for model, b in baselines.items():
        table.add_row(f"all {model}", "", "", "", "", "", "", f"{b['cost_per_1k_requests']:.4f}")
    Console().print(table)


def _plot(results, baselines, oracle, settings: RouterSettings, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in results.items():
        style = {"linestyle": "--", "color": "grey"} if name == "random" else {}
        ax.plot(r.curve.share * 100, r.curve.quality, label=f"{name} (APGR {r.apgr:.2f})", **style)
    ax.plot(oracle.share * 100, oracle.quality, ":", color="black", label="oracle (knows the gain)")
    for model, b in baselines.items():
        share = 100.0 if model == settings.large_model else 0.0
        ax.scatter([share], [b["mean_quality"]], zorder=3, label=f"all {model}")
    ax.set_xlabel("calls to the large model (%)")
    ax.set_ylabel("quality (mean log-prob per reference token)")
    ax.set_title("llmesh router: quality vs large-model share (held-out half)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@app.command()
def train(l2: float = typer.Option(1.0, help="L2 penalty of both regressions")) -> None:
    """Fit the learned router on the fit half of the logged outcomes; save the next version."""
    from services.router import evaluate, learned

    settings = load_settings(RouterSettings)
    queries, key = _queries(settings)
    router = learned.train(
        evaluate.features(evaluate.split(queries)[0]),
        evaluate.gains(evaluate.split(queries)[0], settings),
        "unsaved",
        {"data_key": key, "split": "fit", "queries": len(evaluate.split(queries)[0])},
        l2,
    )
    path = learned.save_next(router)
    err.print(f"saved {path.relative_to(REPO_ROOT)}; the router loads the newest from LLMESH_LEARNED_ROUTER_PATH")
    print(path)


@app.command()
def calibrate(
    share: float = typer.Option(..., min=0.0, max=1.0, help="target share of calls to the large model"),
    policy: str = typer.Option("perplexity", help=f"one of {', '.join(THRESHOLD_SETTINGS)}"),
) -> None:
    """The threshold that sends `share` of the fit half's queries to the large model."""
    from services.router import evaluate

    if policy not in THRESHOLD_SETTINGS:
        raise typer.BadParameter(f"unknown policy {policy!r}", param_hint="--policy")
    settings = load_settings(RouterSettings)
    queries, key = _queries(settings)
    fit, report = evaluate.split(queries)
    chosen = evaluate.policies(settings, _learned(settings, queries, key))[policy]
    threshold = evaluate.calibrate(chosen, fit, settings, share)
    variable, to_setting = THRESHOLD_SETTINGS[policy]
    measured = float((evaluate.scores(chosen, report, settings) > threshold).mean())
    err.print(
        f"{policy}: threshold {threshold:.6g} sends {share:.0%} of the fit half, {measured:.1%} of the report half"
    )
    print(f"{variable}={to_setting(threshold):.6g}")


# ------------------------------------------------------------------------------------------
# bench


def _bench_prompts(settings: RouterSettings, n: int, max_tokens: int = 512) -> list[list[int]]:
    """Chat-templated eval prompts in the scoring model's tokens, padded with further eval text
    to random lengths up to 512 tokens, as preprocess renders them."""
    from transformers import AutoTokenizer

    from mesh.catalog import find_model
    from textkit.tokenizers import render_chat

    tokenizer = AutoTokenizer.from_pretrained(find_model(settings.models, settings.scoring_model).resolved_dir())
    rows = [json.loads(line) for line in (REPO_ROOT / "models/artifacts/eval.jsonl").read_text().splitlines()]
    rng = random.Random(0)
    prompts = []
    for _ in range(n):
        length = rng.randint(16, max_tokens)
        text = ""
        while len(tokenizer(text)["input_ids"]) < length:
            row = rng.choice(rows)
            text += f" {row['prompt']} {row['reference']}"
        prompts.append(render_chat(tokenizer, [{"role": "user", "content": text}])[1][-max_tokens:])
    return prompts


async def _route_latencies(stub, model: str, prompts: list[list[int]], concurrency: int) -> list[float]:
    from llmesh.common.v1 import common_pb2
    from llmesh.router.v1 import router_pb2

    latencies: list[float] = []
    queue = list(prompts)

    async def worker() -> None:
        while queue:
            prompt = common_pb2.ModelPrompt(model=model, token_ids=queue.pop())
            started = time.perf_counter()
            await stub.Route(router_pb2.RouteRequest(prompts=[prompt], requested_model="auto"), timeout=10)
            latencies.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


@contextlib.contextmanager
def _running_stack(settings: RouterSettings):
    """The running stack (`make run`), else a whole stack of its own on free ports."""
    from cli.stack import Ports, Stack
    from mesh.probe import grpc_serving

    if grpc_serving(settings.router_addr)():
        err.print(f"benchmarking the running router at {settings.router_addr}")
        yield settings
        return
    err.print(f"no router at {settings.router_addr}: starting a stack on free ports (Triton with its engines first)")
    with Stack(ports=Ports.free(), run_dir=REPO_ROOT / ".run" / "bench-router") as stack:
        yield settings.model_copy(
            update={
                "router_addr": stack.env["LLMESH_ROUTER_ADDR"],
                "inference_addr": stack.env["LLMESH_INFERENCE_ADDR"],
            }
        )


async def _bench(settings: RouterSettings, prompts, n_c32: int) -> dict:
    from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc
    from llmesh.router.v1 import router_pb2_grpc

    from mesh.channel import build_channel

    model = settings.scoring_model
    router, inference = build_channel(settings.router_addr, settings), build_channel(settings.inference_addr, settings)
    try:
        stub = router_pb2_grpc.RouterServiceStub(router)
        await _route_latencies(stub, model, prompts[:20], 4)  # warm-up: connections, the engine's first batches
        c1 = await _route_latencies(stub, model, prompts, 1)
        c32 = await _route_latencies(stub, model, (prompts * (n_c32 // len(prompts) + 1))[:n_c32], 32)
        # The Score call alone, from this process: the part of a decision that is the engine's.
        score = inference_pb2_grpc.InferenceServiceStub(inference).Score
        scoring = []
        for ids in prompts:
            started = time.perf_counter()
            await score(inference_pb2.ScoreRequest(model=model, prompt_token_ids=ids[-settings.max_score_tokens :]), timeout=10)
            scoring.append((time.perf_counter() - started) * 1000)
    finally:
        await router.close()
        await inference.close()
    return {
        "p50_ms": round(float(np.percentile(c1, 50)), 3),
        "p99_ms": round(float(np.percentile(c1, 99)), 3),
        "p50_ms_c32": round(float(np.percentile(c32, 50)), 3),
        "p99_ms_c32": round(float(np.percentile(c32, 99)), 3),
        "score_call_p50_ms": round(float(np.percentile(scoring, 50)), 3),
        "score_call_p99_ms": round(float(np.percentile(scoring, 99)), 3),
        "requests_c1": len(c1),
        "requests_c32": len(c32),
        "policy": settings.route_policy,
        "max_prompt_tokens": max(len(p) for p in prompts),
        "scored_tokens": settings.max_score_tokens,
    }


@app.command()
def bench(
    as_json: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
    requests: int = typer.Option(300, help="Route calls at concurrency 1 (and twice as many at 32)"),
) -> None:
    """Route RPC latency, the Score call to the inference service included, for prompts of up to 512 tokens."""
    settings = load_settings(RouterSettings)
    prompts = _bench_prompts(settings, requests)
    with _running_stack(settings) as target:
        result = asyncio.run(_bench(target, prompts, 2 * requests))
    if as_json:
        print(json.dumps(result))
        return
    table = Table(
        title=f"router decision latency ({result['policy']}, prompts up to {result['max_prompt_tokens']} tokens)"
    )
    for column in ("concurrency", "requests", "p50 ms", "p99 ms"):
        table.add_column(column, justify="right")
    table.add_row("1", str(result["requests_c1"]), f"{result['p50_ms']:.2f}", f"{result['p99_ms']:.2f}")
    table.add_row("32", str(result["requests_c32"]), f"{result['p50_ms_c32']:.2f}", f"{result['p99_ms_c32']:.2f}")
    table.add_row("1 (Score call only)", str(result["requests_c1"]), f"{result['score_call_p50_ms']:.2f}",
                  f"{result['score_call_p99_ms']:.2f}")  # fmt: skip
    Console().print(table)
