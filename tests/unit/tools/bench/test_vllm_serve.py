"""The runner of vLLM's serving benchmark: the command it builds and the figures it keeps, with a
stand-in for vLLM's module that writes a result file as vLLM does (vLLM itself runs in
``llmesh bench mesh``)."""

import sys

import pytest

from tools.bench import vllm_serve

# Writes the result file where the arguments say, with the arguments it was given, as vLLM does.
FAKE_VLLM = """
import json, sys
args = sys.argv[1:]
value = lambda name: args[args.index(name) + 1]
figures = {"completed": int(value("--num-prompts")), "failed": 0, "median_ttft_ms": 12.5, "args": args}
open(value("--result-dir") + "/" + value("--result-filename"), "w").write(json.dumps(figures))
"""


def test_one_run_per_concurrency_through_the_chat_endpoint_with_the_key(monkeypatch):
    monkeypatch.setattr(vllm_serve, "ENGINE_PYTHON", sys.executable)
    monkeypatch.setattr(vllm_serve, "_RUN", FAKE_VLLM)
    rows = vllm_serve.run("http://127.0.0.1:9", "sk-test", "smollm2-student", concurrencies=(1, 8), prompts=4)
    assert [(r["concurrency"], r["completed"], r["median_ttft_ms"]) for r in rows] == [(1, 4, 12.5), (8, 8, 12.5)]
    assert "p99_ttft_ms" in rows[0] and rows[0]["p99_ttft_ms"] is None  # kept even when vLLM left it out
    command = rows[1]["command"]
    for part in ("--backend openai-chat", "--base-url http://127.0.0.1:9", "--endpoint /v1/chat/completions",
                 "--model smollm2-student", "--max-concurrency 8", "--temperature 0",
                 "--header cache-control=no-cache"):  # fmt: skip
        assert part in command


def test_a_failed_benchmark_says_why(monkeypatch):
    monkeypatch.setattr(vllm_serve, "ENGINE_PYTHON", sys.executable)
    monkeypatch.setattr(vllm_serve, "_RUN", "import sys; print('connection refused'); sys.exit(3)")
    with pytest.raises(RuntimeError, match=r"(?s)failed \(3\).*connection refused"):
        vllm_serve.run("http://127.0.0.1:9", "sk-test", "smollm2-student", concurrencies=(1,))
