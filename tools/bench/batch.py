"""Batch throughput, and what a running batch does to interactive latency.

``llmesh bench batch`` starts the real stack (Triton, every service, the gateway, one batch
worker) on free ports, or uses a running one, then:

1. interactive requests alone: their latency (p50, p99);
2. a batch of ``--lines`` requests alone: lines per second;
3. the same batch again while the same interactive load runs: lines per second, and the
   interactive p99 against the one of step 1 (the target is at most 1.5x).

Interactive load is ``--clients`` closed-loop clients (each sends its next request when the last
one is answered). Figures go to stdout as a table (``--json``: one JSON object), and the
latency distributions to a PNG.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

err = Console(stderr=True)
TERMINAL = ("completed", "failed", "expired", "cancelled")
PROMPTS = [
    "What does json.dumps do?",
    "Explain os.path.join.",
    "What is a list comprehension?",
    "How do I read a file line by line?",
    "What does the with statement do?",
]


def _chat_body(i: int, max_tokens: int) -> dict:
    content = PROMPTS[i % len(PROMPTS)]
    return {"model": "llmesh-small", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}


async def _interactive(http: httpx.AsyncClient, clients: int, stop: asyncio.Event, max_tokens: int) -> list[float]:
    """Latencies (s) of closed-loop chat requests until ``stop`` is set."""
    latencies: list[float] = []

    async def client(number: int) -> None:
        i = number
        while not stop.is_set():
            started = time.perf_counter()
            response = await http.post("/chat/completions", json=_chat_body(i, max_tokens))
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)
            i += clients

    await asyncio.gather(*(client(n) for n in range(clients)))
    return latencies


async def _batch(http: httpx.AsyncClient, lines: int, max_tokens: int, label: str) -> dict:
    """Runs one batch of ``lines`` requests; its lines per second from start to finish."""
    requests = [
        {
            "custom_id": f"{label}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": _chat_body(i, max_tokens),
        }
        for i in range(lines)
    ]
    content = "\n".join(json.dumps(request) for request in requests).encode()
    form = {"file": ("bench.jsonl", content)}
    uploaded = (await http.post("/files", files=form, data={"purpose": "batch"})).raise_for_status()
    started = time.perf_counter()
    body = {"input_file_id": uploaded.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    batch = (await http.post("/batches", json=body)).raise_for_status().json()
    with tqdm(total=lines, desc=f"batch ({label})", file=sys.stderr, unit="line") as bar:
        while batch["status"] not in TERMINAL:
            await asyncio.sleep(0.25)
            batch = (await http.get(f"/batches/{batch['id']}")).raise_for_status().json()
            counts = batch["request_counts"]
            bar.update(counts["completed"] + counts["failed"] - bar.n)
    elapsed = time.perf_counter() - started
    counts = batch["request_counts"]
    return {
        "status": batch["status"],
        "completed": counts["completed"],
        "failed": counts["failed"],
        "seconds": round(elapsed, 2),
        "lines_per_second": round(lines / elapsed, 2),
    }


def _percentiles(latencies: list[float]) -> dict:
    values = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "p50_ms": round(float(np.percentile(values, 50)), 1),
        "p99_ms": round(float(np.percentile(values, 99)), 1),
    }


async def measure(base_url: str, api_key: str, lines: int, clients: int, seconds: float, max_tokens: int) -> dict:
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=120) as http:
        err.print("warming up ...")
        await _interactive_for(http, clients, 3.0, max_tokens)
        err.print(f"interactive alone: {clients} clients for {seconds:g}s ...")
        alone = await _interactive_for(http, clients, seconds, max_tokens)
        batch_alone = await _batch(http, lines, max_tokens, "alone")
        err.print(f"batch with interactive traffic ({clients} clients) ...")
        stop = asyncio.Event()
        traffic = asyncio.create_task(_interactive(http, clients, stop, max_tokens))
        batch_loaded = await _batch(http, lines, max_tokens, "loaded")
        stop.set()
        during = await traffic
    baseline, loaded = _percentiles(alone), _percentiles(during)
    return {
        "lines": lines,
        "interactive_clients": clients,
        "max_tokens": max_tokens,
        "batch_alone": batch_alone,
        "batch_with_interactive": batch_loaded,
        "interactive_alone": baseline,
        "interactive_during_batch": loaded,
        "p99_ratio": round(loaded["p99_ms"] / baseline["p99_ms"], 2),
        "latencies_ms": {"alone": [x * 1000 for x in alone], "during_batch": [x * 1000 for x in during]},
    }


async def _interactive_for(http: httpx.AsyncClient, clients: int, seconds: float, max_tokens: int) -> list[float]:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, stop.set)
    return await _interactive(http, clients, stop, max_tokens)


def table(result: dict) -> Table:
    table = Table(title=f"batch of {result['lines']} lines, {result['interactive_clients']} interactive clients")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for label, key in (("batch alone", "batch_alone"), ("batch during interactive", "batch_with_interactive")):
        batch = result[key]
        table.add_row(
            f"{label}: lines/s", f"{batch['lines_per_second']:.1f} ({batch['completed']} ok, {batch['failed']} failed)"
        )
    for label, key in (
        ("interactive alone", "interactive_alone"),
        ("interactive during batch", "interactive_during_batch"),
    ):
        figures = result[key]
        table.add_row(
            f"{label}: p50 / p99 ms",
            f"{figures['p50_ms']:.0f} / {figures['p99_ms']:.0f} ({figures['requests']} requests)",
        )
    table.add_row("p99 during batch / alone (target <= 1.5)", f"{result['p99_ratio']:.2f}")
    return table


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    for label, values in result["latencies_ms"].items():
        ordered = np.sort(values)
        axes.plot(ordered, np.arange(1, len(ordered) + 1) / len(ordered), label=label.replace("_", " "))
    axes.set_xlabel("interactive request latency (ms)")
    axes.set_ylabel("share of requests")
    axes.set_title(f"Interactive latency with and without a {result['lines']}-line batch (p99 x{result['p99_ratio']})")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
