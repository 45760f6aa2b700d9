"""Distil the cheap tier from SmolLM2-135M-Instruct, offline, seeded, in minutes on 2 cores.

    .venv-engine/bin/python -m tools.distill --out .cache/models/smollm2-student

1. Prompts: ``tools.distill.prompts`` (the standard library's docs and templates; no download).
2. Teacher answers: vLLM's offline batch generation (greedy) with the top-``TOP_K`` log-probs of
   every answer token, rendered with the chat template exactly as preprocess renders prompts.
   Cached under ``.cache/distill/`` by a key of the prompts and the teacher, so a second training
   run does not regenerate them.
3. Student: the teacher's architecture with ``KEPT_LAYERS`` of its 30 layers (copied), its
   embedding matrix (tied to the output layer, copied and frozen, so the student shares the
   teacher's tokenizer and output space) and final norm. 4 of 30 layers makes a token about 4x
   cheaper in vLLM on CPU; the 49k x 576 embedding is a third of the teacher's weights and
   stays as it is.
4. Training: the loss on answer positions is the cross-entropy of the student against the
   teacher's top-k distribution (renormalised), i.e. word-level knowledge distillation (Hinton
   et al. 2015; Kim and Rush 2016 for the sequence-level part: the targets are the teacher's own
   greedy answers). AdamW, linear warm-up then cosine decay, a fixed number of epochs, seeded.
5. Saved in bf16 with the teacher's tokenizer and chat template, atomically; ``distill.json``
   in the directory records the recipe, the losses and the wall times.

Runs in the engine's environment (vLLM); no serving process imports it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TEACHER_DIR = REPO_ROOT / ".cache/models/smollm2-135m-instruct"
CACHE_DIR = REPO_ROOT / ".cache/distill"
RECIPE_VERSION = 1
SEED = 14
PROMPTS = 2400
# Short answers: the first tokens decide whether an answer is right, and a token of training
# costs as much as a token of generation here.
MAX_NEW_TOKENS = 48
TOP_K = 8
# Chosen among a few layer subsets by the initial distillation loss (see choose_layers); the
# first two layers and the last one matter most, as layer-pruning studies of Llama models find.
LAYER_CANDIDATES = ([0, 1, 2, 29], [0, 1, 28, 29], [0, 10, 20, 29], [0, 1, 15, 29], [0, 2, 4, 29])
EPOCHS = 2
BATCH = 16
LR = 1e-3
WARMUP_STEPS = 10
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def _key(prompts: list[str], teacher: Path) -> str:
    digest = hashlib.sha256(f"recipe={RECIPE_VERSION};max_new={MAX_NEW_TOKENS};top_k={TOP_K}".encode())
    for prompt in prompts:
        digest.update(prompt.encode() + b"\0")
    digest.update((teacher / "model.safetensors").read_bytes()[: 1 << 20])
    return digest.hexdigest()[:16]


def teacher_answers(prompts: list[str], teacher: Path) -> list[dict]:
    """Per prompt: its token ids, the teacher's greedy answer ids and each answer token's top-k."""
    from transformers import AutoTokenizer

    from textkit.tokenizers import render_chat

    cache = CACHE_DIR / f"teacher-{_key(prompts, teacher)}.json"
    if cache.is_file():
        print(f"teacher answers: {cache} (cached)", flush=True)
        return json.loads(cache.read_text())
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from vllm import LLM, SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(teacher)
    rendered = [render_chat(tokenizer, [{"role": "user", "content": p}])[1] for p in prompts]
    # bf16: 2.5x the throughput of fp32 here; the targets are distributions, which bf16 keeps
    # (it only flips near-ties, e.g. the served fp32 teacher's 0.1-nat first token of "Paris").
    llm = LLM(model=str(teacher), dtype="bfloat16", max_model_len=512, enforce_eager=True, max_num_seqs=64, seed=SEED)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS, logprobs=TOP_K)
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in rendered], params, use_tqdm=True)
    rows = []
    for ids, output in zip(rendered, outputs, strict=True):
        completion = output.outputs[0]
        top = []
        for entry in completion.logprobs:
            ranked = sorted(entry.items(), key=lambda kv: kv[1].rank or 0)[: TOP_K + 1]
            top.append([[int(t), float(lp.logprob)] for t, lp in ranked])
        rows.append(
            {
                "prompt_ids": ids,
                "answer_ids": list(completion.token_ids),
                "top": top,
                "finished": completion.finish_reason == "stop",
            }
        )
    del llm
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(rows))
    return rows


def build_student(teacher, layers: list[int]):
    """The teacher with only ``layers`` kept (copied weights); embeddings frozen."""
    import copy

    import torch

    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layers)
    student = type(teacher)(config)
    student.model.embed_tokens.weight.data.copy_(teacher.model.embed_tokens.weight.data)
    student.model.norm.load_state_dict(teacher.model.norm.state_dict())
    for target, source in zip(student.model.layers, layers, strict=True):
        target.load_state_dict(teacher.model.layers[source].state_dict())
    student.tie_weights()
    # Frozen: the embeddings (the output space stays the teacher's) and the first layer, whose
    # output every kept layer was trained on; gradients then stop above it, which saves time.
    student.model.embed_tokens.weight.requires_grad_(False)
    student.model.layers[0].requires_grad_(False)
    return student.to(torch.float32)


def batches(rows: list[dict], batch: int, rng: random.Random) -> list[list[dict]]:
    """Length-sorted buckets (little padding), in random order."""
    ordered = sorted(rows, key=lambda r: len(r["prompt_ids"]) + len(r["answer_ids"]))
    groups = [ordered[i : i + batch] for i in range(0, len(ordered), batch)]
    rng.shuffle(groups)
    return groups


def loss_on(student, group: list[dict], eos: int):
    """Cross-entropy against the teacher's renormalised top-k at every answer position."""
    import torch

    sequences, targets = [], []
    for row in group:
        answer = row["answer_ids"] + ([eos] if row["finished"] else [])
        sequences.append(row["prompt_ids"] + answer)
        targets.append((len(row["prompt_ids"]), row["top"] + ([[[eos, 0.0]]] if row["finished"] else [])))
    width = max(map(len, sequences))
    ids = torch.zeros((len(sequences), width), dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    hidden = student.model(input_ids=ids, attention_mask=mask).last_hidden_state
    rows, cols, token_ids, probs = [], [], [], []
    for i, (start, top) in enumerate(targets):
        for j, alternatives in enumerate(top):
            # The answer token at start + j is predicted from position start + j - 1.
            values = torch.tensor([lp for _, lp in alternatives], dtype=torch.float32)
            weights = torch.softmax(values, 0)
            for (token, _), weight in zip(alternatives, weights, strict=True):
                rows.append(i)
                cols.append(start + j - 1)
                token_ids.append(token)
                probs.append(weight)
    positions = sorted(set(zip(rows, cols, strict=True)))
    index = {p: k for k, p in enumerate(positions)}
    at = torch.tensor(positions)
    logprobs = torch.log_softmax(student.lm_head(hidden[at[:, 0], at[:, 1]]).float(), -1)
    picked = logprobs[torch.tensor([index[(r, c)] for r, c in zip(rows, cols, strict=True)]), torch.tensor(token_ids)]
    return -(torch.stack(probs) * picked).sum() / len(positions)


def choose_layers(teacher, rows: list[dict], eos: int) -> tuple[list[int], dict[str, float]]:
    import torch

    probe = rows[:: max(1, len(rows) // 48)][:48]
    losses = {}
    with torch.inference_mode():
        for layers in LAYER_CANDIDATES:
            student = build_student(teacher, list(layers))
            losses[str(list(layers))] = float(
                sum(loss_on(student, probe[i : i + 16], eos) for i in range(0, len(probe), 16))
                / math.ceil(len(probe) / 16)
            )
    best = min(losses, key=losses.__getitem__)
    return json.loads(best), losses


def train(teacher_dir: Path, out: Path, prompts_n: int, epochs: int, seed: int) -> None:
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM

    from tools.distill.prompts import training_prompts

    started = time.perf_counter()
    random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    prompts = [prompt for _, prompt in training_prompts(prompts_n, seed)]
    rows = teacher_answers(prompts, teacher_dir)
    generated = time.perf_counter()
    answer_tokens = sum(len(r["answer_ids"]) for r in rows)
    print(f"{len(rows)} teacher answers, {answer_tokens} tokens ({generated - started:.0f} s)", flush=True)

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    eos = int(
        teacher.generation_config.eos_token_id
        if isinstance(teacher.generation_config.eos_token_id, int)
        else teacher.generation_config.eos_token_id[0]
    )
    layers, layer_losses = choose_layers(teacher, rows, eos)
    print(f"kept teacher layers {layers} (initial loss per candidate: {layer_losses})", flush=True)
    student = build_student(teacher, layers)
    del teacher
    student.train()

    rng = random.Random(seed)
    trainable = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LR, weight_decay=0.01, betas=(0.9, 0.98))
    plan = [group for _ in range(epochs) for group in batches(rows, BATCH, rng)]
    total = len(plan)

    def lr_at(step: int) -> float:
        if step < WARMUP_STEPS:
            return LR * (step + 1) / WARMUP_STEPS
        return LR * 0.5 * (1 + math.cos(math.pi * (step - WARMUP_STEPS) / max(1, total - WARMUP_STEPS)))

    history = []
    bar = tqdm(plan, desc="distilling", unit="batch")
    for step, group in enumerate(bar):
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr_at(step)
        loss = loss_on(student, group, eos)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        history.append(float(loss.detach()))
        bar.set_postfix(loss=f"{sum(history[-20:]) / len(history[-20:]):.3f}")
    trained = time.perf_counter()

    save(
        student,
        teacher_dir,
        out,
        {
            "recipe": RECIPE_VERSION,
            "seed": seed,
            "teacher": str(teacher_dir.relative_to(REPO_ROOT)),
            "kept_layers": layers,
            "layer_candidates": layer_losses,
            "prompts": len(rows),
            "answer_tokens": answer_tokens,
            "max_new_tokens": MAX_NEW_TOKENS,
            "top_k": TOP_K,
            "epochs": epochs,
            "batch": BATCH,
            "lr": LR,
            "steps": total,
            "loss_first_20": sum(history[:20]) / 20,
            "loss_last_20": sum(history[-20:]) / 20,
            "loss_every_10_steps": [
                round(sum(history[i : i + 10]) / len(history[i : i + 10]), 4) for i in range(0, total, 10)
            ],
            "seconds": {
                "teacher_answers": round(generated - started),
                "training": round(trained - generated),
                "total": round(time.perf_counter() - started),
            },
            "threads": torch.get_num_threads(),
        },
    )


def save(student, teacher_dir: Path, out: Path, record: dict) -> None:
    import torch

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        student.to(torch.bfloat16).save_pretrained(staging)
        for name in TOKENIZER_FILES:
            if (teacher_dir / name).is_file():
                shutil.copy2(teacher_dir / name, staging / name)
        shutil.copy2(teacher_dir / "generation_config.json", staging / "generation_config.json")
        (staging / "distill.json").write_text(json.dumps(record, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    size_mb = sum(p.stat().st_size for p in out.iterdir()) / 1e6
    print(f"wrote {out} ({size_mb:.0f} MB; {record['seconds']})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--teacher", type=Path, default=TEACHER_DIR)
    parser.add_argument("--prompts", type=int, default=PROMPTS)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    train(args.teacher.resolve(), args.out.resolve(), args.prompts, args.epochs, args.seed)


if __name__ == "__main__":
    main()
