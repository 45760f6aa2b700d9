"""`llmesh bench engine`: streaming throughput and time to first token of each served model, at
several numbers of concurrent streams, directly on Triton and through the gateway.

Both paths get the same requests: the same chat prompts (rendered and tokenized for the direct
path exactly as preprocess does), greedy decoding and the same ``max_tokens``, so they generate
the same tokens and the comparison is the mesh's cost alone. Output tokens/s is the total
completion tokens of a level divided by its wall time; TTFT is per stream.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

PROMPTS = (
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how a steam engine works.",
    "Describe a walk through a busy market in a big city.",
    "Write a letter to a friend about your summer holidays.",
    "Tell me everything you know about the history of bread.",
    "Explain how to plan a vegetable garden, step by step.",
    "Write a short essay about why people enjoy music.",
    "Describe the life cycle of a butterfly in detail.",
)


@dataclass(frozen=True)
class Level:
    """One model, one path, one number of concurrent streams."""

    model: str
    path: str  # "direct" (Triton) or "gateway" (REST/SSE)
    concurrency: int
    streams: int
    completion_tokens: int
    wall_s: float
    ttft_p50_ms: float
    ttft_p90_ms: float

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.wall_s if self.wall_s else 0.0


@dataclass(frozen=True)
class Stream:
    completion_tokens: int
    ttft_s: float
    # Wall time of the whole stream, and the gaps between chunks that carried tokens (text).
    latency_s: float = 0.0
    gaps_s: tuple[float, ...] = ()


class _Clock:
    """Times one stream: its first token, the gaps between token chunks, its end."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.ttft = 0.0
        self.last = 0.0
        self.gaps: list[float] = []

    def token(self) -> None:
        now = time.perf_counter()
        if not self.ttft:
            self.ttft = now - self.started
        else:
            self.gaps.append(now - self.last)
        self.last = now

    def done(self, tokens: int) -> Stream:
        latency = time.perf_counter() - self.started
        # A stream whose text all came in its last chunk (held back by the output guard).
        return Stream(tokens, self.ttft or latency, latency, tuple(self.gaps))


async def _level(one: Callable[[int], Any], concurrency: int, rounds: int) -> tuple[list[Stream], float]:
    """``concurrency`` workers, each sending ``rounds`` streams one after another."""

    async def worker(index: int) -> list[Stream]:
        return [await one(index * rounds + r) for r in range(rounds)]

    started = time.perf_counter()
    results = await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return [stream for streams in results for stream in streams], time.perf_counter() - started


class BenchPath(Protocol):
    """A way to the engine: ``stream`` gives a function that sends the stream of a given index."""

    def stream(self, model: str, max_tokens: int) -> Callable[[int], Awaitable[Stream]]: ...

    async def close(self) -> None: ...


class DirectPath:
    """Straight to Triton's engine model over tritonclient's aio streaming, as the inference
    service calls it, with the prompt in the model's own tokens."""

    def __init__(self, triton_grpc_addr: str, models: Sequence[Any], prompts: Sequence[str] = PROMPTS) -> None:
        from transformers import AutoTokenizer

        from mesh.settings import MeshSettings
        from services.inference.triton_client import TritonClient
        from textkit.tokenizers import render_chat

        self.client = TritonClient(MeshSettings(triton_grpc_addr=triton_grpc_addr, default_deadline_s=300))
        self.prompts = {}
        for spec in models:
            tokenizer = AutoTokenizer.from_pretrained(spec.resolved_dir())
            self.prompts[spec.name] = [render_chat(tokenizer, [{"role": "user", "content": p}])[1] for p in prompts]

    def stream(self, model: str, max_tokens: int) -> Callable[[int], Awaitable[Stream]]:
        async def one(index: int) -> Stream:
            params = {"max_tokens": max_tokens, "temperature": 0.0}
            clock, tokens, prompts = _Clock(), 0, self.prompts[model]
            async for chunk in self.client.generate_stream(model, prompts[index % len(prompts)], params):
                if chunk.token_ids:
                    clock.token()
                tokens = chunk.completion_tokens
            return clock.done(tokens)

        return one

    async def close(self) -> None:
        await self.client.close()


class GatewayPath:
    """Through the whole mesh: the gateway's OpenAI-compatible REST edge, streamed (SSE)."""

    def __init__(
        self, url: str, api_key: str, prompts: Sequence[str] = PROMPTS, headers: dict[str, str] | None = None
    ) -> None:
        self.prompts = list(prompts)
        self.client = httpx.AsyncClient(
            base_url=url,
            headers={"authorization": f"Bearer {api_key}", **(headers or {})},
            timeout=300,
            limits=httpx.Limits(max_connections=64),
        )

    def stream(self, model: str, max_tokens: int) -> Callable[[int], Awaitable[Stream]]:
        async def one(index: int) -> Stream:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": self.prompts[index % len(self.prompts)]}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            clock, tokens = _Clock(), 0
            async with self.client.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code != 200:
                    raise RuntimeError(f"gateway answered {response.status_code}: {await response.aread()!r}")
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[len("data: ") :])
                    if "error" in chunk:
                        raise RuntimeError(f"stream failed: {chunk['error']}")
                    if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                        clock.token()
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
            return clock.done(tokens)

        return one

    async def close(self) -> None:
        await self.client.aclose()


def _percentile_ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(1000 * ordered[min(int(q * len(ordered)), len(ordered) - 1)], 1)


async def run(
    paths: dict[str, BenchPath],
    models: Sequence[str],
    concurrencies: Sequence[int],
    max_tokens: int,
    rounds_at_one: int,
    progress: Callable[[str], None] = lambda step: None,
) -> list[Level]:
    """Every model x path x concurrency; a warm-up stream first on each model and path."""
    levels = []
    for model in models:
        for name, path in paths.items():
            progress(f"{model} {name} warm-up")
            await path.stream(model, 8)(0)
            for concurrency in concurrencies:
                progress(f"{model} {name} x{concurrency}")
                rounds = rounds_at_one if concurrency == 1 else 1
                streams, wall = await _level(path.stream(model, max_tokens), concurrency, rounds)
                ttfts = [s.ttft_s for s in streams]
                levels.append(
                    Level(
                        model,
                        name,
                        concurrency,
                        len(streams),
                        sum(s.completion_tokens for s in streams),
                        round(wall, 3),
                        _percentile_ms(ttfts, 0.5),
                        _percentile_ms(ttfts, 0.9),
                    )
                )
    return levels


def summary(levels: list[Level]) -> dict[str, Any]:
    """Per model: scaling (tokens/s at the highest concurrency over 1) on each path, and the
    gateway's tokens/s as a share of direct at each concurrency: the issue's two targets."""
    out: dict[str, Any] = {}
    by_key = {(level.model, level.path, level.concurrency): level for level in levels}
    for model in dict.fromkeys(level.model for level in levels):
        concurrencies = sorted({level.concurrency for level in levels if level.model == model})
        low, high = concurrencies[0], concurrencies[-1]
        entry: dict[str, Any] = {}
        for path in ("direct", "gateway"):
            if (model, path, low) in by_key and (model, path, high) in by_key:
                base = by_key[(model, path, low)].tokens_per_s
                entry[f"{path}_scaling_{high}_over_{low}"] = (
                    round(by_key[(model, path, high)].tokens_per_s / base, 2) if base else None
                )
        entry["gateway_share_of_direct"] = {
            str(c): round(by_key[(model, "gateway", c)].tokens_per_s / by_key[(model, "direct", c)].tokens_per_s, 3)
            for c in concurrencies
            if (model, "gateway", c) in by_key
            and (model, "direct", c) in by_key
            and by_key[(model, "direct", c)].tokens_per_s
        }
        out[model] = entry
    return out


def report(levels: list[Level], meta: dict[str, Any]) -> dict[str, Any]:
    return {
        **meta,
        "levels": [{**asdict(level), "tokens_per_s": round(level.tokens_per_s, 1)} for level in levels],
        "summary": summary(levels),
    }


def plot(levels: list[Level], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(level.model for level in levels))
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for model in models:
        for route, style in (("direct", "-o"), ("gateway", "--s")):
            points = sorted(
                (lv.concurrency, lv.tokens_per_s, lv.ttft_p50_ms)
                for lv in levels
                if lv.model == model and lv.path == route
            )
            if not points:
                continue
            xs = [p[0] for p in points]
            axes[0].plot(xs, [p[1] for p in points], style, label=f"{model} ({route})")
            axes[1].plot(xs, [p[2] for p in points], style, label=f"{model} ({route})")
    for axis, title, unit in ((axes[0], "output tokens/s", "tokens/s"), (axes[1], "time to first token, p50", "ms")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent streams")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle("llmesh bench engine: vLLM in Triton, direct vs through the gateway")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
