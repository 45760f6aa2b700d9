"""The router's evaluation data: per query, each model's quality score and the router's signals.

Built from the held-out eval split (``models/artifacts/eval.jsonl``, never trained on) and cached
in ``models/artifacts/router/quality.jsonl``, keyed by a hash of the model artifacts and of this
recipe, so a retrained model invalidates the cache.

Quality of model m on query q: the mean log-probability per token that m gives the reference
answer (followed by ``<|im_end|>``) after the chat-templated prompt, exactly as preprocess
renders it. It is the teacher-forced likelihood of a correct answer: higher means the model puts
more mass on what a good answer says (docs/ROUTER.md argues the choice).

Signals are computed in-process with the same code Triton runs (the scoring model's ``Scorer``
over the small model, on the last ``max_score_tokens`` prompt tokens), so offline and online
routers see the same perplexity.
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

RECIPE_VERSION = 2
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
    # model name -> mean log-prob per reference token (the quality score).
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


def build(models: list[ModelSpec], small: str, max_score_tokens: int, progress=None) -> list[Query]:
    """Score every eval query under every model (a few tens of seconds for the tiny models)."""
    import torch

    from services.inference.triton_models.common import load_causal_lm
    from services.inference.triton_models.score import Scorer

    rows = [json.loads(line) for line in EVAL_PATH.read_text().splitlines() if line.strip()]
    loaded = {m.name: load_causal_lm(m.resolved_dir(), torch_threads=1) for m in models}
    tokenizer = loaded[models[0].name][1]  # the catalog's models share the first one's tokenizer
    end = tokenizer.eos_token or ""
    scorers = {name: Scorer(model) for name, (model, _) in loaded.items()}
    small_model = loaded[small][0]
    stop_ids = {tokenizer.eos_token_id, tokenizer.pad_token_id}

    queries = []
    for row in progress(rows) if progress else rows:
        prompt_text = tokenizer.apply_chat_template(
            [{"role": "user", "content": row["prompt"]}], add_generation_prompt=True, tokenize=False
        )
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        reference_ids = tokenizer(row["reference"] + end, add_special_tokens=False)["input_ids"]
        context = min(s.max_context or 10**9 for s in scorers.values())
        full = (prompt_ids + reference_ids)[-context:]
        n_ref = min(len(reference_ids), len(full) - 1)
        quality = {}
        for name, scorer in scorers.items():
            logprobs = scorer.score([full])[0]
            quality[name] = float(np.mean(logprobs[-n_ref:], dtype=np.float64))
        scored = scorers[small].score([prompt_ids[-max_score_tokens:]])[0]
        signals = {PERPLEXITY: math.exp(-float(np.mean(scored, dtype=np.float64)))}
        with torch.inference_mode():
            out = small_model.generate(
                torch.tensor([prompt_ids]),
                max_new_tokens=CASCADE_TOKENS,
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
                pad_token_id=tokenizer.pad_token_id,
            )
        answer = out.sequences[0, len(prompt_ids) :].tolist()
        logprobs = [float(torch.log_softmax(step[0].float(), -1)[token]) for step, token in zip(out.scores, answer)]
        cut = next((i + 1 for i, t in enumerate(answer) if t in stop_ids), len(answer))
        signals[SMALL_ANSWER_LOGPROB] = float(np.mean(logprobs[:cut])) if cut else -20.0
        signals[PROMPT_TOKENS] = float(len(prompt_ids))
        signals.update(lexical_features(prompt_text))
        queries.append(Query(row["prompt"], row["source"], len(prompt_ids), len(reference_ids), quality, signals))
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
