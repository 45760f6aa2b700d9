"""`llmesh experiments list|apply|report|stop|delete|demo`: A/B tests from the command line.

Definitions and figures live in Redis (LLMESH_REDIS_URL), so these commands work on the store
directly; gateways pick up changes within a second. Progress goes to stderr; with --json, stdout
holds exactly one JSON document.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from pathlib import Path

import httpx
import typer
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from gateway.experiments import chart
from gateway.experiments.assignment import FORCE_HEADER
from gateway.experiments.definitions import Experiment, Target, Variant, conflicts, load_file
from gateway.experiments.stats import experiment_report
from gateway.experiments.store import ExperimentStore
from mesh.settings import REPO_ROOT, MeshSettings, load_settings

app = typer.Typer(help="A/B tests: define, apply, report, demo", no_args_is_help=True)
out = Console()
err = Console(stderr=True)
CHART_DIR = REPO_ROOT / ".run/experiments"
DEMO = "demo-models"
DEMO_MAX_REQUESTS = 400
_REDIS = typer.Option(None, "--redis-url", help="default: LLMESH_REDIS_URL")


def _run(redis_url: str | None, work):
    """Runs ``work(store)`` against the experiment store."""

    async def main():
        store = ExperimentStore.from_url(redis_url or load_settings(MeshSettings).redis_url)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(main())


@app.command("list")
def list_(as_json: bool = typer.Option(False, "--json"), redis_url: str = _REDIS) -> None:
    """The stored experiments."""
    experiments = _run(redis_url, lambda store: store.load())
    if as_json:
        print(json.dumps([experiment.model_dump() for experiment in experiments], indent=2))
        return
    table = Table("name", "state", "target", "unit", "variants (basis points)", "shadow")
    for e in experiments:
        target = e.target.kind + (f" {e.target.service}" if e.target.service else "")
        variants = ", ".join(
            f"{v.name}={v.weight}" + (f" ({v.deployment or v.model})" if v.deployment != "primary" or v.model else "")
            for v in e.variants
        )
        shadow = f"{e.shadow.name} {e.shadow.share}bp" if e.shadow else ""
        table.add_row(e.name, e.state, target, e.unit, variants, shadow)
    out.print(table)


@app.command()
def apply(path: Path = typer.Argument(..., exists=True, dir_okay=False), redis_url: str = _REDIS) -> None:
    """Store the experiments of a YAML file (new ones start, changed ones change in place)."""
    try:
        experiments = load_file(path)
    except ValueError as error:
        err.print(f"[red]invalid experiments file {path}:[/] {error}")
        raise typer.Exit(2) from None

    async def work(store: ExperimentStore):
        others = [e for e in await store.load() if e.name not in {x.name for x in experiments}]
        problems = conflicts([*others, *experiments])
        if not problems:
            await store.save(experiments)
        return problems

    problems = _run(redis_url, work)
    if problems:
        err.print("[red]not applied:[/] " + "; ".join(problems))
        raise typer.Exit(2)
    for experiment in experiments:
        err.print(f"applied {experiment.name} ({experiment.state})")


def _set_state(name: str, state: str, redis_url: str | None) -> None:
    async def work(store: ExperimentStore):
        experiment = await store.get(name)
        if experiment is not None:
            await store.save([experiment.model_copy(update={"state": state})])
        return experiment

    if _run(redis_url, work) is None:
        err.print(f"[red]no experiment {name!r}[/]")
        raise typer.Exit(1)


@app.command()
def stop(name: str, redis_url: str = _REDIS) -> None:
    """Stop splitting traffic (the figures stay for the report)."""
    _set_state(name, "stopped", redis_url)


@app.command()
def delete(name: str, keep_results: bool = typer.Option(False), redis_url: str = _REDIS) -> None:
    """Delete an experiment and, unless --keep-results, its figures."""
    if not _run(redis_url, lambda store: store.delete(name, keep_results=keep_results)):
        err.print(f"[red]no experiment {name!r}[/]")
        raise typer.Exit(1)


@app.command()
def report(
    name: str,
    as_json: bool = typer.Option(False, "--json", help="the report as JSON on stdout"),
    chart_path: Path = typer.Option(None, "--chart", help=f"PNG chart path (default {CHART_DIR}/NAME.png)"),
    redis_url: str = _REDIS,
) -> None:
    """Per-variant means with 95% CIs, lift, p-values, the SRM check and a PNG chart."""
    result = _run(redis_url, lambda store: experiment_report(store, name))
    if result is None:
        err.print(f"[red]no experiment {name!r}[/]")
        raise typer.Exit(1)
    path = _write_chart(result, chart_path)
    if as_json:
        print(json.dumps({**result, "chart": str(path)}, indent=2))
    else:
        print_report(result, out)
        out.print(f"chart: {path}")


@app.command("export-istio")
def export_istio(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="experiment definitions (YAML)"),
    out_path: Path | None = typer.Option(None, "--out", help="write here instead of stdout"),
) -> None:
    """Istio DestinationRules and VirtualServices that route each variant to its deployment."""
    from cli.istio import render

    text = render(path)
    if out_path is None:
        print(text, end="")
    else:
        out_path.write_text(text)
        err.print(f"wrote {out_path}")


def _write_chart(result: dict, path: Path | None) -> Path:
    path = path or CHART_DIR / f"{result['experiment']}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(chart.render(result))
    return path


def _fmt(value: float | None, scale: float = 1, digits: int = 1, unit: str = "") -> str:
    return "–" if value is None else f"{value * scale:.{digits}f}{unit}"


def _estimate(summary: dict, scale: float = 1, digits: int = 1, unit: str = "") -> str:
    value = summary.get("mean", summary.get("rate"))
    ci = summary.get("ci95")
    text = _fmt(value, scale, digits, unit)
    if ci:
        text += f" [{_fmt(ci[0], scale, digits)}, {_fmt(ci[1], scale, digits)}]"
    return text


def _comparison(summary: dict) -> str:
    if "p_value" not in summary:
        return "control"
    lift = _fmt(summary.get("lift"), 100, 1, "%")
    p = "–" if summary["p_value"] is None else f"{summary['p_value']:.2g}"
    mark = " [bold green]*[/]" if summary.get("significant") else ""
    return f"{lift}, p={p}{mark}"


# (metric, label, scale, digits, unit)
_ROWS = (
    ("latency_s", "latency ms", 1000, 0, ""),
    ("ttft_s", "TTFT ms (streams)", 1000, 0, ""),
    ("output_tokens", "output tokens", 1, 2, ""),
    ("cost", "cost / request (µ)", 1e6, 2, ""),
    ("errors", "error rate %", 100, 2, ""),
    ("blocked", "safety blocks %", 100, 2, ""),
    ("feedback", "feedback score", 1, 2, ""),
)


def print_report(result: dict, console: Console) -> None:
    console.print(
        f"[bold]experiment {result['experiment']}[/] ({result['state']}; target {result['target']['kind']}"
        f"{' ' + result['target']['service'] if result['target'].get('service') else ''}; unit {result['unit']}; "
        f"{result['total_requests']} requests)"
    )
    variants = result["variants"]
    table = Table("metric", *(f"{v['name']}{' (control)' if v['control'] else ''}" for v in variants))
    shares = [f"{v['requests']} ({_fmt(v['share'], 100, 2, '%')} / {v['weight_bp'] / 100:g}%)" for v in variants]
    table.add_row("requests (share / configured)", *shares)
    for metric, label, scale, digits, unit in _ROWS:
        table.add_row(f"{label} (95% CI)", *(_estimate(v["metrics"][metric], scale, digits, unit) for v in variants))
        table.add_row("  lift, p-value", *(_comparison(v["metrics"][metric]) for v in variants), style="dim")
    latency = [v["metrics"]["latency_s"] for v in variants]
    table.add_row(
        "p50 / p95 latency ms", *(f"{_fmt(m.get('p50'), 1000, 0)} / {_fmt(m.get('p95'), 1000, 0)}" for m in latency)
    )
    table.add_row("models", *(", ".join(f"{m}: {n}" for m, n in v["models"].items()) or "–" for v in variants))
    console.print(table)
    srm = result["srm"]
    if srm["p_value"] is not None:
        verdict = "[red]MISMATCH[/]" if srm["mismatch"] else "[green]ok[/]"
        console.print(f"sample ratio check: chi-square {srm['chi2']:.2f}, p = {srm['p_value']:.3g} {verdict}")
    shadow = result.get("shadow")
    if shadow:
        console.print(
            f"shadow {shadow['name']} ({shadow['share_bp'] / 100:g}% mirrored): {shadow['mirrored']} requests, "
            f"errors {_estimate(shadow['errors'], 100, 1, '%')}, same text {_estimate(shadow['same_text'], 100, 1, '%')}, "
            f"same model {_estimate(shadow['same_model'], 100, 1, '%')}, latency vs primary "
            f"{_estimate(shadow['latency_diff_s'], 1000, 0, ' ms')}, output tokens "
            f"{_fmt(shadow['output_tokens']['mean'], 1, 2)} vs {_fmt(shadow['primary_output_tokens']['mean'], 1, 2)}"
        )
    for warning in result["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}")
    if result["verdict_ready"]:
        console.print("* significant at 5% (Welch's t-test for means, two-proportion z-test for rates)")


# The demo: llmesh-small against smollm2-135m-instruct for requests that let the platform choose.
DEMO_PROMPTS = (
    "What does json.dumps do?",
    "Explain os.path.join.",
    "How do I read a file line by line?",
    "What is a list comprehension?",
    "How does the logging module format messages?",
    "What does re.sub return?",
    "Describe collections.Counter.",
    "When should I use a generator?",
)


def demo_experiment(min_samples: int) -> Experiment:
    return Experiment(
        name=DEMO,
        description="llmesh-small vs smollm2-135m-instruct for model=auto requests (llmesh experiments demo)",
        target=Target(kind="model"),
        unit="user",
        min_samples=min_samples,
        variants=[
            Variant(name="small", weight=5000, model="llmesh-small"),
            Variant(name="large", weight=5000, model="smollm2-135m-instruct"),
        ],
    )


@app.command()
def demo(
    requests: int = typer.Option(300, min=20, max=DEMO_MAX_REQUESTS, help="requests to send"),
    concurrency: int = typer.Option(4, min=1, max=16),
    max_tokens: int = typer.Option(8, min=1, max=32),
    gateway: str = typer.Option(None, help="gateway URL (default: LLMESH_GATEWAY_HTTP_ADDR)"),
    api_key: str = typer.Option(None, envvar="LLMESH_API_KEY", help="default: a new key for tenant experiments-demo"),
    redis_url: str = _REDIS,
) -> None:
    """Run a two-variant experiment against the running stack (`make run`) and print its report."""
    settings = load_settings(MeshSettings)
    redis_url = redis_url or settings.redis_url
    url = gateway or f"http://{settings.gateway_http_addr}"
    definition = demo_experiment(min_samples=max(requests // 4, 10))

    async def setup(store: ExperimentStore) -> None:
        await store.reset(DEMO)
        await store.save([definition])

    _run(redis_url, setup)
    headers = {"authorization": f"Bearer {api_key or _demo_key(redis_url)}"}
    err.print(f"experiment {DEMO}: {requests} requests to {url} ({concurrency} at a time, max_tokens {max_tokens})")
    outcomes = asyncio.run(_drive(url, headers, requests, concurrency, max_tokens))
    err.print(f"answered {outcomes['ok']}, failed {outcomes['failed']}, feedback given {outcomes['feedback']}")

    async def finish(store: ExperimentStore) -> dict:
        await store.save([definition.model_copy(update={"state": "stopped"})])
        # The gateway writes figures right after each answer; wait for the last ones.
        for _ in range(50):
            found = await experiment_report(store, DEMO)
            if found is None:
                raise RuntimeError(f"experiment {DEMO!r} left the store while the demo ran")
            result = found
            if result["total_requests"] >= outcomes["ok"] + outcomes["failed"]:
                break
            await asyncio.sleep(0.1)
        return result

    result = _run(redis_url, finish)
    print_report(result, out)
    out.print(f"chart: {_write_chart(result, None)}   (llmesh experiments report {DEMO} [--json])")


def _demo_key(redis_url: str) -> str:
    from cli.keys import create_key

    # Its own tenant with limits the demo cannot hit, so rate limiting does not skew the split.
    return create_key(redis_url, "experiments-demo", "llmesh experiments demo", rpm=100_000, tpm=100_000_000)[0]


async def _drive(url: str, headers: dict, total: int, concurrency: int, max_tokens: int) -> dict:
    counts = {"ok": 0, "failed": 0, "feedback": 0}
    generator = random.Random(0)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as client:
        await _wait_until_served(client)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in range(total):
            queue.put_nowait(index)
        with tqdm(total=total, desc="demo requests", unit="req") as progress:

            async def worker() -> None:
                while not queue.empty():
                    index = queue.get_nowait()
                    body = {
                        "model": "auto",
                        "messages": [{"role": "user", "content": generator.choice(DEMO_PROMPTS)}],
                        "max_tokens": max_tokens,
                        "temperature": 0,
                        # Streamed, so time to first token is measured too.
                        "stream": True,
                        # One request per user: each unit is one independent observation.
                        "user": f"demo-user-{os.getpid()}-{index}",
                    }
                    answer = await _stream(client, body)
                    if answer is None:
                        counts["failed"] += 1
                    else:
                        counts["ok"] += 1
                        request_id, finish_reason = answer
                        # Demo feedback: 1 when the answer ended on its own within max_tokens.
                        score = 1.0 if finish_reason == "stop" else 0.0
                        given = await client.post("/v1/feedback", json={"request_id": request_id, "score": score})
                        counts["feedback"] += given.status_code == 200
                    progress.update()

            await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts


async def _stream(client: httpx.AsyncClient, body: dict) -> tuple[str, str] | None:
    """Reads a streamed completion to its end: (request id, finish reason), None on failure."""
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return None
        finish_reason = None
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[len("data: ") :])
                finish_reason = next(
                    (c["finish_reason"] for c in chunk["choices"] if c["finish_reason"]), finish_reason
                )
    return response.headers["x-request-id"], finish_reason or ""


async def _wait_until_served(client: httpx.AsyncClient, timeout_s: float = 15.0) -> None:
    """Until the gateway serves the demo: a forced request (never counted) stops being refused."""
    deadline = time.monotonic() + timeout_s
    probe = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    while True:
        response = await client.post("/v1/chat/completions", json=probe, headers={FORCE_HEADER: f"{DEMO}=small"})
        if response.status_code == 200:
            return
        if time.monotonic() > deadline:
            message = f"the gateway at {client.base_url} does not serve {DEMO}: {response.status_code} {response.text}"
            err.print(message, style="red", markup=False)
            raise typer.Exit(1)
        await asyncio.sleep(0.3)
