"""Answers of both tiers to every eval item, through the real stack, cached in a committed file.

Each item is rendered with each model's own tokenizer and chat template exactly as preprocess
renders it (``textkit.tokenizers.render_chat``) and answered by ``InferenceService.Generate``
(Triton, vLLM) greedily (temperature 0, ``MAX_TOKENS``), with no fallback model, so an answer
is always the named model's. The router's signals come from the same stack: the prompt's
perplexity under the scoring model from ``InferenceService.Score`` (last ``max_score_tokens``
tokens, as the router sends them), and for the cascade the mean token log-prob of the small
model's answer as the gateway computes it (``gateway/cascade.py``).

Uses the inference service at ``LLMESH_INFERENCE_ADDR`` when one is serving; otherwise starts
tritonserver with the models needed and an inference service in this process, on free ports.

The file (``models/artifacts/router/answers.jsonl``) starts with a header line holding the key:
a hash of the items, the models' weights, the sampling settings and the scoring window. Judged
scores are not stored: ``tools.router.judge`` recomputes them from the answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from mesh.catalog import REPO_ROOT, ModelSpec, find_model

ANSWERS_PATH = REPO_ROOT / "models/artifacts/router/answers.jsonl"
COLLECT_VERSION = 1
MAX_TOKENS = 64
CONCURRENCY = 16


def model_fingerprint(model: ModelSpec) -> str:
    """A hash of the model's weights and tokenizer (what its answers depend on)."""
    digest = hashlib.sha256(model.name.encode())
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        path = model.resolved_dir() / name
        if path.is_file():
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def catalog_model(models: list[ModelSpec], name: str) -> ModelSpec:
    """The catalog entry of a model the settings name (a model missing there is a setup error)."""
    spec = find_model(models, name)
    if spec is None:
        raise ValueError(f"model {name!r} is not in the catalog")
    return spec


def answers_key(items: list[dict], models: list[ModelSpec], scoring_model: str, max_score_tokens: int) -> str:
    digest = hashlib.sha256(
        f"v={COLLECT_VERSION};max_tokens={MAX_TOKENS};scoring={scoring_model};window={max_score_tokens}".encode()
    )
    digest.update(json.dumps([[i["id"], i["prompt"]] for i in items]).encode())
    for model in sorted(models, key=lambda m: m.name):
        digest.update(model_fingerprint(model).encode())
    return digest.hexdigest()[:16]


def load(key: str | None = None, path: Path = ANSWERS_PATH) -> tuple[dict, list[dict]] | None:
    """(header, rows) of the cached file; None if absent or made for another key."""
    if not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0]) if lines else {}
    if key is not None and header.get("key") != key:
        return None
    return header, [json.loads(line) for line in lines[1:]]


def save(header: dict, rows: list[dict], path: Path = ANSWERS_PATH) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(header, ensure_ascii=False)]
    lines += [json.dumps(row, ensure_ascii=False, separators=(",", ":")) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@contextlib.contextmanager
def triton_if_needed(settings, models: list[str]) -> Iterator[str | None]:
    """None when an inference service is already serving (it has its Triton); else the gRPC
    address of a tritonserver started here with ``models``, on free ports."""
    from tools.stack import grpc_serving

    if grpc_serving(settings.inference_addr)():
        yield None
        return
    from mesh.net import free_ports
    from services.inference.triton_server import TritonServer

    http, grpc_port, metrics = free_ports(3)
    log_file = REPO_ROOT / ".run/router/collect-triton.log"
    with TritonServer(
        http_port=http, grpc_port=grpc_port, metrics_port=metrics, models=models, log_file=log_file
    ) as triton:
        yield triton.grpc_url


async def _with_service(items: list[dict], settings, triton_addr: str | None, progress) -> list[dict]:
    """Answers from the serving inference service, or from one started in this loop for our Triton."""
    if triton_addr is None:
        return await _collect(items, settings, settings.inference_addr, progress)
    from mesh.server import start_service
    from services.inference.service import InferenceService
    from services.inference.settings import InferenceSettings

    # Answers are collected at full load on a small machine: first tokens take long, and no
    # breaker may open on that.
    inference_settings = InferenceSettings(
        models=settings.models, triton_grpc_addr=triton_addr, default_deadline_s=600.0, breaker_slow_ttft_s=600.0
    )
    service = InferenceService(inference_settings)
    running = await start_service(service, inference_settings, "127.0.0.1:0")
    try:
        return await _collect(items, settings, f"127.0.0.1:{running.port}", progress)
    finally:
        await running.stop(None)
        await service.close()


async def _collect(items: list[dict], settings, address: str, progress: Callable[[int], None]) -> list[dict]:
    from transformers import AutoTokenizer

    from llmesh.common.v1 import common_pb2
    from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc
    from mesh.channel import build_channel
    from services.router.signals import PERPLEXITY, PROMPT_TOKENS, SMALL_ANSWER_LOGPROB, lexical_features
    from textkit.tokenizers import decode_text, render_chat

    tiers = [settings.small_model, settings.large_model]
    specs = {name: catalog_model(settings.models, name) for name in {*tiers, settings.scoring_model}}
    tokenizers = {name: AutoTokenizer.from_pretrained(spec.resolved_dir()) for name, spec in specs.items()}
    channel = build_channel(address, settings)
    stub = inference_pb2_grpc.InferenceServiceStub(channel)
    gate = asyncio.Semaphore(CONCURRENCY)
    sampling = common_pb2.SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)

    async def one(item: dict) -> dict:
        messages = [{"role": "user", "content": item["prompt"]}]
        rendered = {name: render_chat(tokenizers[name], messages) for name in specs}
        async with gate:
            answers = {}
            for name in tiers:
                prompt = common_pb2.ModelPrompt(model=name, token_ids=rendered[name][1])
                response = await stub.Generate(
                    inference_pb2.GenerateRequest(model=name, prompts=[prompt], sampling=sampling), timeout=600
                )
                choice = response.choices[0]
                answers[name] = {
                    "text": decode_text(tokenizers[name], choice.token_ids, skip_special_tokens=True).strip(),
                    "tokens": len(choice.token_ids),
                    "finish": common_pb2.FinishReason.Name(choice.finish_reason),
                    "mean_logprob": round(sum(choice.token_logprobs) / max(len(choice.token_logprobs), 1), 5),
                }
            text, ids = rendered[settings.scoring_model]
            scored = await stub.Score(
                inference_pb2.ScoreRequest(
                    model=settings.scoring_model, prompt_token_ids=ids[-settings.max_score_tokens :]
                ),
                timeout=600,
            )
        progress(1)
        signals = {
            PERPLEXITY: round(scored.perplexity, 5),
            PROMPT_TOKENS: float(len(ids)),
            SMALL_ANSWER_LOGPROB: answers[settings.small_model]["mean_logprob"],
            **{k: round(v, 6) for k, v in lexical_features(text).items()},
        }
        prompt_tokens = {name: len(rendered[name][1]) for name in tiers}
        return {**item, "prompt_tokens": prompt_tokens, "answers": answers, "signals": signals}

    try:
        return list(await asyncio.gather(*(one(item) for item in items)))
    finally:
        await channel.close()


def collect(
    items: list[dict], settings, key: str, progress: Callable[[int], None] = lambda n: None
) -> tuple[dict, list[dict]]:
    """Answer every item with both tiers and score its prompt; saves and returns (header, rows)."""
    models = list(dict.fromkeys([settings.small_model, settings.large_model, settings.scoring_model]))
    started = time.monotonic()
    with triton_if_needed(settings, models) as triton_addr:
        rows = asyncio.run(_with_service(items, settings, triton_addr, progress))
    header = {
        "key": key,
        "version": COLLECT_VERSION,
        "models": {name: model_fingerprint(catalog_model(settings.models, name)) for name in models},
        "small_model": settings.small_model,
        "large_model": settings.large_model,
        "scoring_model": settings.scoring_model,
        "max_tokens": MAX_TOKENS,
        "temperature": 0.0,
        "max_score_tokens": settings.max_score_tokens,
        "collected_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.monotonic() - started),
        "via": "InferenceService.Generate / Score (tritonserver, vLLM)",
    }
    save(header, rows)
    return header, rows
