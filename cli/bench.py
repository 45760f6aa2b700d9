"""`llmesh bench ...`: benchmarks that print numbers, write JSON and plots."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from mesh.settings import REPO_ROOT, MeshSettings, load_settings

app = typer.Typer(help="benchmarks (progress on stderr; a table, JSON and a PNG plot)", no_args_is_help=True)
err = Console(stderr=True)


@contextlib.contextmanager
def _stack(settings: MeshSettings, run_dir: Path):
    """(gateway URL, Triton gRPC address, an API key): the running stack's (`make run`), else
    a stack of its own on free ports, stopped afterwards."""
    import httpx

    from cli.keys import create_key
    from tools.stack import Ports, Stack

    url = f"http://{settings.gateway_http_addr}"
    try:
        running = httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        running = False
    if running:
        err.print(f"benchmarking the running stack at {url}")
        key = create_key(settings.redis_url, "bench", "llmesh bench", rpm=1_000_000, tpm=1_000_000_000)[0]
        yield url, settings.triton_grpc_addr, key
        return
    err.print("no stack running: starting one on free ports (the engines take a minute to load) ...")
    with Stack(ports=Ports.free(), run_dir=run_dir, on_ready=lambda name, s: err.print(f"  ready {name:<12} {s:5.1f}s")) as stack:
        key = create_key(stack.env["LLMESH_REDIS_URL"], "bench", "llmesh bench", rpm=1_000_000, tpm=1_000_000_000)[0]
        yield stack.gateway_url, stack.env["LLMESH_TRITON_GRPC_ADDR"], key


@app.command()
def engine(
    concurrency: list[int] = typer.Option([1, 8, 32], help="numbers of concurrent streams (repeatable)"),
    max_tokens: int = typer.Option(64, min=1, max=512, help="tokens to generate per stream"),
    rounds_at_one: int = typer.Option(3, min=1, help="streams one after another at concurrency 1"),
    model: list[str] = typer.Option([], help="models to measure (default: every catalog model)"),
    out: Path = typer.Option(REPO_ROOT / ".run" / "bench", help="where engine.json and engine.png go"),
    as_json: bool = typer.Option(False, "--json", help="print the JSON report on stdout"),
) -> None:
    """Output tokens/s and time to first token per model at 1, 8 and 32 concurrent streams,
    directly on Triton and through the gateway."""
    from tools.bench import engine as bench

    settings = load_settings(MeshSettings)
    models = [m for m in settings.models if not model or m.name in model]
    steps = len(models) * 2 * (len(concurrency) + 1)
    with _stack(settings, out / "stack") as (url, triton_addr, key), Progress(console=err) as progress:
        task = progress.add_task("bench engine", total=steps)

        def step(name: str) -> None:
            progress.update(task, advance=1, description=name)

        async def measure():
            paths: dict[str, bench.BenchPath] = {
                "direct": bench.DirectPath(triton_addr, models),
                "gateway": bench.GatewayPath(url, key),
            }
            try:
                return await bench.run(paths, [m.name for m in models], sorted(concurrency), max_tokens, rounds_at_one, step)
            finally:
                for path in paths.values():
                    await path.close()

        levels = asyncio.run(measure())
    result = bench.report(levels, {"max_tokens": max_tokens, "decoding": "greedy", "prompts": len(bench.PROMPTS)})
    out.mkdir(parents=True, exist_ok=True)
    (out / "engine.json").write_text(json.dumps(result, indent=2) + "\n")
    plot = bench.plot(levels, out / "engine.png")
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title=f"llmesh bench engine ({max_tokens} tokens per stream, greedy)")
    for column in ("model", "path", "streams at once", "output tokens/s", "TTFT p50 ms", "TTFT p90 ms"):
        table.add_column(column, justify="left" if column in ("model", "path") else "right", no_wrap=True)
    for level in levels:
        table.add_row(
            level.model, level.path, str(level.concurrency), f"{level.tokens_per_s:.1f}",
            f"{level.ttft_p50_ms:.0f}", f"{level.ttft_p90_ms:.0f}",
        )
    console = Console(width=max(Console().width, 100))
    console.print(table)
    for name, entry in result["summary"].items():
        console.print(f"{name}: {json.dumps(entry)}")
    console.print(f"report {out / 'engine.json'}, plot {plot}")


@app.command()
def batch(
    lines: int = typer.Option(1000, min=1, help="requests in each batch"),
    clients: int = typer.Option(2, min=1, help="closed-loop interactive clients"),
    seconds: float = typer.Option(30.0, min=1, help="how long interactive requests run alone"),
    max_tokens: int = typer.Option(16, min=1, help="max_tokens of every request"),
    out: Path = typer.Option(REPO_ROOT / ".run" / "bench", help="where batch.json and batch.png go"),
    as_json: bool = typer.Option(False, "--json", help="print the JSON report on stdout"),
) -> None:
    """Batch lines per second alone and under interactive load, and the interactive p50/p99 with
    and without a batch running (docs/BATCH.md)."""
    from tools.bench import batch as bench

    settings = load_settings(MeshSettings)
    with _stack(settings, out / "stack") as (url, _, key):
        result = asyncio.run(bench.measure(f"{url}/v1", key, lines, clients, seconds, max_tokens))
    out.mkdir(parents=True, exist_ok=True)
    bench.plot(result, out / "batch.png")
    del result["latencies_ms"]
    (out / "batch.json").write_text(json.dumps(result, indent=2) + "\n")
    if as_json:
        print(json.dumps(result))
        return
    Console().print(bench.table(result))
    err.print(f"report {out / 'batch.json'}, plot {out / 'batch.png'}")
