"""The router's evaluation data: per query, each model's quality score and the router's signals.

Built from the held-out eval split (``models/artifacts/eval.jsonl``, never trained on) and cached
in ``models/artifacts/router/quality.jsonl``, keyed by a hash of the model artifacts and of this
recipe, so a retrained model invalidates the cache.

Quality of model m on query q: the log-probability that m gives the reference answer (followed by
its end-of-turn token) after the prompt rendered with m's own chat template, as preprocess renders
it, per character of the reference: models with different vocabularies split the same text into
different numbers of tokens, so a per-token mean would not compare them. It is the teacher-forced
likelihood of a correct answer: higher means the model puts more mass on what a good answer says
(docs/ROUTER.md argues the choice).

Signals are computed in-process with plain transformers, as the engine computes them online (the
scoring model's prompt log-probabilities on the last ``max_score_tokens`` prompt tokens).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mesh.catalog import REPO_ROOT, ModelSpec
from services.router.policies import PERPLEXITY, PROMPT_TOKENS, SMALL_ANSWER_LOGPROB, lexical_features

RECIPE_VERSION = 3
EVAL_PATH = REPO_ROOT / "models/artifacts/eval.jsonl"
CACHE_PATH = REPO_ROOT / "models/artifacts/router/quality.jsonl"
# Tokens of the small model's own greedy answer that the cascade signal looks at.
CASCADE_TOKENS = 24


@dataclass
class Query:
    """One eval query with everything a router or the metrics need."""

    prompt: str
    source: str
    prompt_tokens: int
    reference_tokens: int
    # model name -> log-prob of the reference per character (the quality score).
    quality: dict[str, float]
    # signal name -> value, as the online router computes it.
    signals: dict[str, float] = field(default_factory=dict)


def artifacts_key(models: Iterable[ModelSpec], max_score_tokens: int) -> str:
    digest = hashlib.sha256(f"recipe={RECIPE_VERSION};score_tokens={max_score_tokens}".encode())
    digest.update(EVAL_PATH.read_bytes())
    for model in models:
        digest.update(model.name.encode())
        for name in ("model.safetensors", "tokenizer.json", "config.json"):
            path = model.resolved_dir() / name
            if path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def load_cached(key: str, path: Path = CACHE_PATH) -> list[Query] | None:
    if not path.is_file():
        return None
    lines = path.read_text().splitlines()
    header = json.loads(lines[0]) if lines else {}
    if header.get("key") != key:
        return None
    return [Query(**json.loads(line)) for line in lines[1:]]


def save(queries: list[Query], key: str, path: Path = CACHE_PATH) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"key": key, "recipe": RECIPE_VERSION})]
    lines += [json.dumps(asdict(q), separators=(",", ":")) for q in queries]
    path.write_text("\n".join(lines) + "\n")


def _token_logprobs(model, ids: list[int]) -> np.ndarray:
    """log p(token i | tokens < i) for i = 1..n-1, as the engine's prompt_logprobs."""
    import torch

    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0].double().numpy()


def build(models: list[ModelSpec], small: str, max_score_tokens: int, progress=None) -> list[Query]:
    """Score every eval query under every model (a minute or two on 2 cores)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from textkit.tokenizers import render_chat

    rows = [json.loads(line) for line in EVAL_PATH.read_text().splitlines() if line.strip()]
    loaded = {
        m.name: (
            AutoModelForCausalLM.from_pretrained(m.resolved_dir(), dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(m.resolved_dir()),
            m.context_length,
        )
        for m in models
    }
    small_model, small_tokenizer, _ = loaded[small]
    stop_ids = {small_tokenizer.eos_token_id, small_tokenizer.pad_token_id}

    queries = []
    for row in progress(rows) if progress else rows:
        messages = [{"role": "user", "content": row["prompt"]}]
        quality, reference_tokens = {}, {}
        for name, (model, tokenizer, context) in loaded.items():
            _, prompt_ids = render_chat(tokenizer, messages)
            reference_ids = tokenizer(row["reference"] + (tokenizer.eos_token or ""), add_special_tokens=False)["input_ids"]
            full = (prompt_ids + reference_ids)[-context:]
            n_ref = min(len(reference_ids), len(full) - 1)
            reference_tokens[name] = len(reference_ids)
            quality[name] = float(_token_logprobs(model, full)[-n_ref:].sum() / max(len(row["reference"]), 1))
        prompt_text, prompt_ids = render_chat(small_tokenizer, messages)
        scored = _token_logprobs(small_model, prompt_ids[-max_score_tokens:])
        signals = {PERPLEXITY: math.exp(-float(np.mean(scored)))}
        with torch.inference_mode():
            out = small_model.generate(
                torch.tensor([prompt_ids]),
                max_new_tokens=CASCADE_TOKENS,
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
                pad_token_id=small_tokenizer.pad_token_id,
            )
        answer = out.sequences[0, len(prompt_ids) :].tolist()
        logprobs = [float(torch.log_softmax(step[0].float(), -1)[token]) for step, token in zip(out.scores, answer)]
        cut = next((i + 1 for i, t in enumerate(answer) if t in stop_ids), len(answer))
        signals[SMALL_ANSWER_LOGPROB] = float(np.mean(logprobs[:cut])) if cut else -20.0
        signals[PROMPT_TOKENS] = float(len(prompt_ids))
        signals.update(lexical_features(prompt_text))
        queries.append(Query(row["prompt"], row["source"], len(prompt_ids), reference_tokens[small], quality, signals))
    return queries


def load_or_build(
    models: list[ModelSpec], small: str, max_score_tokens: int, progress=None
) -> tuple[list[Query], bool]:
    """The cached queries if the artifacts are unchanged, else freshly built ones; and whether cached."""
    key = artifacts_key(models, max_score_tokens)
    cached = load_cached(key)
    if cached is not None:
        return cached, True
    queries = build(models, small, max_score_tokens, progress)
    save(queries, key)
    return queries, False
