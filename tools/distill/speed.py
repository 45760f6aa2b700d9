"""Tokens per second of the student and the teacher, both served by vLLM in Triton, measured alike.

    .venv/bin/python -m tools.distill.speed [--rounds 2] [--json]

Starts tritonserver with both models on free ports (the model repository's own configs: same
engine, same dtype), then, for each round, streams the same chat-templated eval prompts through
the project's Triton client (``services.inference.triton_client``) to each model in turn: 64
tokens per answer (``ignore_eos``, so every answer is as long), at one request at a time and at
8 at once. Models alternate within a round, so load from other work on the machine falls on both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from mesh.catalog import default_models, find_model
from mesh.settings import MeshSettings

STUDENT, TEACHER = "smollm2-student", "smollm2-135m-instruct"
TOKENS = 64


async def _run(client, model: str, prompts: list[list[int]], concurrency: int) -> dict:
    params = {"max_tokens": TOKENS, "temperature": 0.0, "ignore_eos": True}
    queue = list(prompts)
    produced, gaps = 0, []

    async def worker() -> None:
        nonlocal produced
        while queue:
            ids = queue.pop()
            last = time.perf_counter()
            async for chunk in client.generate_stream(model, ids, params):
                now = time.perf_counter()
                if chunk.token_ids:
                    gaps.append((now - last) / len(chunk.token_ids))
                    produced += len(chunk.token_ids)
                last = now

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    gaps.sort()
    return {
        "tokens_per_s": round(produced / seconds, 1),
        "ms_per_token_p50": round(1000 * gaps[len(gaps) // 2], 1),
        "requests": len(prompts),
        "concurrency": concurrency,
    }


async def measure(grpc_addr: str, rounds: int) -> list[dict]:
    from transformers import AutoTokenizer

    from services.inference.triton_client import TritonClient
    from textkit.tokenizers import render_chat
    from tools.router.evalset import template_items

    teacher = find_model(default_models(), TEACHER)
    if teacher is None:
        raise ValueError(f"the teacher {TEACHER!r} is not in the catalog")
    tokenizer = AutoTokenizer.from_pretrained(teacher.resolved_dir())
    texts = [item["prompt"] for item in template_items()[::7]]
    prompts = [render_chat(tokenizer, [{"role": "user", "content": t}])[1] for t in texts]
    client = TritonClient(MeshSettings(triton_grpc_addr=grpc_addr, default_deadline_s=600.0))
    try:
        for model in (STUDENT, TEACHER):  # warm-up: first batches, allocations
            await _run(client, model, prompts[:4], 2)
        out = []
        for number in range(rounds):
            for concurrency, n in ((1, 8), (8, 32)):
                for model in (STUDENT, TEACHER) if number % 2 == 0 else (TEACHER, STUDENT):
                    result = {
                        "round": number + 1,
                        "model": model,
                        **await _run(client, model, prompts[:n], concurrency),
                    }
                    print(json.dumps(result), file=sys.stderr, flush=True)
                    out.append(result)
        return out
    finally:
        await client.close()


def main() -> None:
    from mesh.net import free_ports
    from services.inference.triton_server import TritonServer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    http, grpc_port, metrics = free_ports(3)
    with TritonServer(http_port=http, grpc_port=grpc_port, metrics_port=metrics, models=[STUDENT, TEACHER]) as triton:
        results = asyncio.run(measure(triton.grpc_url, args.rounds))
    summary = []
    for number in range(1, args.rounds + 1):
        for concurrency in (1, 8):
            pick = {r["model"]: r for r in results if r["round"] == number and r["concurrency"] == concurrency}
            summary.append(
                {
                    "round": number,
                    "concurrency": concurrency,
                    "student_tokens_per_s": pick[STUDENT]["tokens_per_s"],
                    "teacher_tokens_per_s": pick[TEACHER]["tokens_per_s"],
                    "speedup": round(pick[STUDENT]["tokens_per_s"] / pick[TEACHER]["tokens_per_s"], 2),
                    "student_ms_per_token_p50": pick[STUDENT]["ms_per_token_p50"],
                    "teacher_ms_per_token_p50": pick[TEACHER]["ms_per_token_p50"],
                }
            )
    if args.json:
        print(json.dumps({"runs": results, "summary": summary}))
        return
    for row in summary:
        print(
            f"round {row['round']}, concurrency {row['concurrency']}: student {row['student_tokens_per_s']} tok/s, "
            f"teacher {row['teacher_tokens_per_s']} tok/s: {row['speedup']}x "
            f"(ms/token p50 {row['student_ms_per_token_p50']} vs {row['teacher_ms_per_token_p50']})"
        )


if __name__ == "__main__":
    main()
