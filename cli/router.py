"""`llmesh router eval|train|calibrate|bench`: measure, train and tune the router.

Progress and notes go to stderr; with --json, stdout holds exactly one JSON object.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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
PLOT_DIR = REPO_ROOT / ".run/router"
# Which setting holds each swept policy's threshold, and how a threshold maps to its value.
THRESHOLD_SETTINGS = {
    "perplexity": ("LLMESH_PERPLEXITY_THRESHOLD", lambda t: t),
    "cascade": ("LLMESH_CASCADE_MIN_LOGPROB", lambda t: -t),
    "learned": ("LLMESH_LEARNED_THRESHOLD", lambda t: t),
    "cost-aware": ("LLMESH_COST_MIN_GAIN_PER_CURRENCY", lambda t: t),
    "ppo": ("LLMESH_PPO_LAMBDA", lambda t: t),
    "random": ("LLMESH_RANDOM_LARGE_SHARE", lambda t: 1.0 - t),
}
SET_TITLES = {
    "report": "report split (template items, never fitted on)",
    "heldout": "hand-written prompts (another kind, never fitted on)",
}


def _data(settings: RouterSettings, recollect: bool = False):
    """(queries, data key): the committed answers if made with these models, else new ones."""
    from tools.router import collect, evalset, evaluate

    items = evalset.all_items()
    models = [
        collect.catalog_model(settings.models, m)
        for m in {settings.small_model, settings.large_model, settings.scoring_model}
    ]
    key = collect.answers_key(items, models, settings.scoring_model, settings.max_score_tokens)
    cached = None if recollect else collect.load(key)
    if cached is not None:
        header, rows = cached
        err.print(
            f"answers: {len(rows)} items from {collect.ANSWERS_PATH.relative_to(REPO_ROOT)} "
            f"(key {key}, collected {header['collected_at']})"
        )
    else:
        err.print(
            f"answers: none for key {key}; answering {len(items)} items with {settings.small_model} and "
            f"{settings.large_model} through Triton (a few minutes) ..."
        )
        with tqdm(total=len(items), file=sys.stderr, desc="answering") as bar:
            _, rows = collect.collect(items, settings, key, bar.update)
    return evaluate.queries(rows), key


def _learned(settings: RouterSettings, fit, key: str):
    """The configured artifact if it was fitted on this data's fit split, else a fresh fit."""
    from services.router import learned
    from tools.router import evaluate

    try:
        router = learned.load_router(settings.learned_router_path)
        if router.trained_on.get("data_key") == key:
            err.print(f"learned router: {router.version} from {settings.learned_router_path}")
            return router
        err.print(f"learned router {router.version} was fitted on other data; fitting one in memory")
    except (FileNotFoundError, ValueError) as error:
        err.print(f"no usable learned router ({error}); fitting one in memory (`llmesh router train` saves one)")
    return evaluate.train_router(fit, settings, key)


def _ppo(settings: RouterSettings, fit, key: str, plot: Path | None = None):
    """The configured PPO policy if it was trained on this data's fit split, else a fresh one."""
    from services.router.ppo import load_ppo

    try:
        router = load_ppo(settings.ppo_router_path)
        if router.trained_on.get("data_key") == key:
            err.print(f"ppo policy: {router.version} from {settings.ppo_router_path}")
            return router
        err.print(f"ppo policy {router.version} was trained on other data; training one in memory")
    except (FileNotFoundError, ValueError) as error:
        err.print(f"no usable ppo policy ({error}); training one in memory (`llmesh router train` saves one)")
    return _train_ppo(settings, fit, key, plot)[0]


def _train_ppo(settings: RouterSettings, fit, key: str, plot: Path | None):
    from tools.router import evaluate, ppo

    weak, strong = evaluate.qualities(fit, settings)
    small_cost, large_cost = evaluate.request_costs(fit, settings)
    router, log = ppo.train(
        evaluate.features(fit),
        weak,
        strong,
        small_cost,
        large_cost,
        {"data_key": key, "split": "fit", "queries": len(fit)},
        progress=lambda steps: tqdm(steps, file=sys.stderr, desc="ppo"),
    )
    err.print(
        f"ppo: {len(log.iteration)} iterations in {log.seconds:.1f} s; final greedy reward "
        f"{log.greedy_reward[-1]:.3f} (oracle {log.oracle_reward[-1]:.3f}, best fixed model {log.best_fixed_reward[-1]:.3f})"
    )
    if plot is not None:
        ppo.plot(log, plot)
        err.print(f"ppo training curve: {plot}")
    return router, log


def _results(settings: RouterSettings, sets, router, ppo_router):
    from tools.router import evaluate, routellm

    out = {}
    for name in ("report", "heldout"):
        items = sets[name]
        results = evaluate.evaluate(items, settings, evaluate.policies(settings, router, ppo_router))
        oracle = evaluate.oracle(items, settings)
        policies = {}
        for policy, r in results.items():
            variable, to_setting = THRESHOLD_SETTINGS[policy]
            policies[policy] = {**r.summary(), "setting": f"{variable}={to_setting(r.threshold):.6g}"}
        out[name] = {
            "results": results,
            "oracle_curve": oracle,
            "json": {
                "policies": policies,
                "baselines": evaluate.baselines(items, settings),
                "queries": len(items),
                "categories": evaluate.by_category(items, settings),
                "random_sanity": {
                    "apgr": round(results["random"].apgr, 4),
                    "ok": abs(results["random"].apgr - 0.5) <= 0.05,
                },
                # Not a policy: the bound a router that knew each query's true gain would reach.
                "oracle": {
                    "apgr": round(routellm.apgr(oracle), 4),
                    "cpt50": routellm.cpt(oracle, 0.5),
                    "cpt80": routellm.cpt(oracle, 0.8),
                },
            },
        }
    return out


@app.command("eval")
def eval_(
    as_json: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
    plot: Path = typer.Option(PLOT_DIR / "eval.png", help="PNG of the cost-quality curves"),
    recollect: bool = typer.Option(False, help="answer every item again through Triton, even if cached"),
) -> None:
    """Every policy on the report split and on the hand-written prompts; RouteLLM's metrics and cost."""
    from tools.router import evaluate

    settings = load_settings(RouterSettings)
    queries, key = _data(settings, recollect)
    sets = evaluate.by_set(queries)
    err.print(
        f"fit {len(sets['fit'])} items (fitting, calibration); report {len(sets['report'])} and hand-written "
        f"{len(sets['heldout'])} items (never fitted on)"
    )
    router = _learned(settings, sets["fit"], key)
    ppo_router = _ppo(settings, sets["fit"], key)
    out = _results(settings, sets, router, ppo_router)
    for name, block in out.items():
        sanity = block["json"]["random_sanity"]
        err.print(
            f"sanity check ({name}): random router APGR {sanity['apgr']:.3f} (expected 0.5 +/- 0.05): "
            f"{'ok' if sanity['ok'] else 'FAILED'}"
        )
    _plot(out, settings, plot)
    err.print(f"plot: {plot}")
    summary = {
        **out["report"]["json"],
        "heldout": out["heldout"]["json"],
        "scenarios": {
            "cost_aware_under_load": evaluate.load_scenarios(sets["report"], settings, router),
            "cost_aware_with_budget": evaluate.budget_scenario(
                sets["report"], settings, evaluate.policies(settings, router, None)["cost-aware"], 0.3
            ),
        },
        "data_key": key,
        "signals": "collected through InferenceService (Triton, vLLM): Generate at temperature 0 and Score",
        "judge": "reference match or verifiable-instruction rules (tools/router/judge.py)",
        "plot": str(plot),
    }
    if as_json:
        print(json.dumps(summary))
        return
    for name, block in out.items():
        _table(block, SET_TITLES[name], settings)


def _table(block, title: str, settings: RouterSettings) -> None:
    from tools.router import routellm

    data = block["json"]
    table = Table(title=f"{title}: {data['queries']} queries")
    for column in ("policy", "APGR", "CPT(50%)", "CPT(80%)", "threshold", "large share", "PGR", "cost / 1k req"):
        table.add_column(column, justify="right" if column != "policy" else "left")
    for name, r in block["results"].items():
        table.add_row(
            name,
            f"{r.apgr:.3f}",
            f"{r.cpt50:.1%}",
            f"{r.cpt80:.1%}",
            f"{r.threshold:.4g}",
            f"{r.share:.1%}",
            f"{r.pgr:.2f}",
            f"{r.cost_per_1k_requests:.4f}",
        )
    oracle = block["oracle_curve"]
    table.add_row(
        "oracle (bound)",
        f"{routellm.apgr(oracle):.3f}",
        f"{routellm.cpt(oracle, 0.5):.1%}",
        f"{routellm.cpt(oracle, 0.8):.1%}",
        "",
        "",
        "",
        "",
    )
    for model, b in data["baselines"].items():
        table.add_row(
            f"all {model}", "", "", "", "", "", f"quality {b['mean_quality']:.3f}", f"{b['cost_per_1k_requests']:.4f}"
        )
    Console().print(table)


def _plot(out, settings: RouterSettings, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for ax, (name, block) in zip(axes, out.items(), strict=True):
        baselines = block["json"]["baselines"]
        for policy, r in block["results"].items():
            style = {"linestyle": "--", "color": "grey"} if policy == "random" else {}
            ax.plot(r.curve_cost_per_1k, r.curve.quality, label=f"{policy} (APGR {r.apgr:.2f})", **style)
            if policy != "random":
                ax.scatter([r.cost_per_1k_requests], [r.quality], s=18, zorder=3)
        for model, b in baselines.items():
            ax.scatter([b["cost_per_1k_requests"]], [b["mean_quality"]], marker="s", color="black", zorder=4)
            ax.annotate(
                f"all {model}",
                (b["cost_per_1k_requests"], b["mean_quality"]),
                fontsize=7,
                textcoords="offset points",
                xytext=(4, -10),
            )
        ax.set_xlabel("cost per 1,000 requests (catalog prices; dots: configured thresholds)")
        ax.set_ylabel("judged quality (share of answers accepted)")
        ax.set_title(SET_TITLES[name], fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"llmesh router: {settings.small_model} vs {settings.large_model}, cost-quality curves")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@app.command()
def collect() -> None:
    """Answer every eval item with both tiers through Triton again and rewrite the cached file."""
    settings = load_settings(RouterSettings)
    queries, key = _data(settings, recollect=True)
    err.print(f"{len(queries)} items answered (key {key})")


@app.command()
def train(
    l2: float = typer.Option(1.0, help="L2 penalty of the learned router's regressions"),
    plot: Path = typer.Option(PLOT_DIR / "ppo-training.png", help="PNG of the PPO training curve"),
) -> None:
    """Fit the learned router and train the PPO policy on the fit split; save the next version of each."""
    from services.router import learned, ppo
    from tools.router import evaluate

    settings = load_settings(RouterSettings)
    queries, key = _data(settings)
    fit = evaluate.by_set(queries)["fit"]
    path = learned.save_next(evaluate.train_router(fit, settings, key, l2))
    err.print(f"saved {path.relative_to(REPO_ROOT)} (learned router)")
    router, _ = _train_ppo(settings, fit, key, plot)
    ppo_path = ppo.save_next(router)
    err.print(f"saved {ppo_path.relative_to(REPO_ROOT)} (ppo policy); the router loads the newest of each")
    print(path)
    print(ppo_path)


@app.command()
def calibrate(
    share: float = typer.Option(..., min=0.0, max=1.0, help="target share of calls to the large model"),
    policy: str = typer.Option("perplexity", help=f"one of {', '.join(THRESHOLD_SETTINGS)}"),
) -> None:
    """The threshold that sends `share` of the fit split's queries to the large model."""
    from tools.router import evaluate

    if policy not in THRESHOLD_SETTINGS:
        raise typer.BadParameter(f"unknown policy {policy!r}", param_hint="--policy")
    settings = load_settings(RouterSettings)
    queries, key = _data(settings)
    sets = evaluate.by_set(queries)
    named = evaluate.policies(settings, _learned(settings, sets["fit"], key), _ppo(settings, sets["fit"], key))
    chosen = named[policy]
    threshold = evaluate.calibrate(chosen, sets["fit"], settings, share)
    variable, to_setting = THRESHOLD_SETTINGS[policy]
    measured = float((evaluate.scores(chosen, sets["report"], settings) > threshold).mean())
    err.print(
        f"{policy}: threshold {threshold:.6g} sends {share:.0%} of the fit split, {measured:.1%} of the report split"
    )
    print(f"{variable}={to_setting(threshold):.6g}")


# ------------------------------------------------------------------------------------------
# bench


def _bench_prompts(settings: RouterSettings, n: int, max_tokens: int = 512) -> list[list[int]]:
    """Chat-templated eval prompts in the scoring model's tokens, joined with further eval prompts
    to random lengths up to 512 tokens, as preprocess renders them."""
    from transformers import AutoTokenizer

    from textkit.tokenizers import render_chat
    from tools.router.collect import catalog_model
    from tools.router.evalset import all_items

    tokenizer = AutoTokenizer.from_pretrained(catalog_model(settings.models, settings.scoring_model).resolved_dir())
    texts = [item["prompt"] for item in all_items()]
    rng = random.Random(0)
    prompts = []
    for _ in range(n):
        length = rng.randint(16, max_tokens)
        text = rng.choice(texts)
        while len(tokenizer(text)["input_ids"]) < length:
            text += f" {rng.choice(texts)}"
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
    from mesh.probe import grpc_serving
    from tools.stack import Ports, Stack

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
            await score(
                inference_pb2.ScoreRequest(model=model, prompt_token_ids=ids[-settings.max_score_tokens :]), timeout=10
            )
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
    table.add_row(
        "1 (Score call only)",
        str(result["requests_c1"]),
        f"{result['score_call_p50_ms']:.2f}",
        f"{result['score_call_p99_ms']:.2f}",
    )
    Console().print(table)
