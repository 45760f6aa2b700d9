"""Train llmesh's own tokenizer and small language model, offline and reproducibly.

    python -m models.train [--out models/artifacts] [--quick]

Writes ``<out>/small`` (a Hugging Face causal-LM directory: config, safetensors weights, tokenizer,
generation config), ``<out>/eval.jsonl`` (held-out questions for router evaluation, never trained
on) and ``<out>/metrics.json``. The full run is sized for about 3 minutes on 2 CPU cores;
``--quick`` trains a tiny model for a few steps (for tests). The model has a vocabulary of its own,
unlike the real chat model served beside it, which keeps per-model tokenization honest.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers
from tqdm import tqdm
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

from models.corpus import build_corpus, write_eval_jsonl
from models.tokenizer import EOT, IM_END, train_tokenizer

SEED = 1234


@dataclass(frozen=True)
class ModelSpec:
    n_layer: int
    n_embd: int
    n_head: int
    steps: int
    batch_size: int
    lr: float
    warmup: int


@dataclass(frozen=True)
class RunSpec:
    vocab_size: int
    context: int
    val_blocks: int | None  # None = all; both models see the same blocks, so perplexities compare
    max_items: int | None  # per split; None = whole corpus
    models: dict[str, ModelSpec]


# Sized to the time budget (~3 min on 2 idle CPU cores), not to convergence: the model sees
# ~1.4M tokens (about 1.6 passes). At this budget more optimizer steps beat bigger batches. Heads
# of 32 dimensions: the smallest head size vLLM's CPU attention kernels take.
FULL = RunSpec(
    vocab_size=4096,
    context=256,
    val_blocks=None,
    max_items=None,
    models={
        "small": ModelSpec(n_layer=2, n_embd=96, n_head=3, steps=700, batch_size=8, lr=5e-3, warmup=30),
    },
)
QUICK = RunSpec(
    vocab_size=512,
    context=64,
    val_blocks=4,
    max_items=300,
    models={
        "small": ModelSpec(n_layer=1, n_embd=64, n_head=2, steps=4, batch_size=4, lr=3e-3, warmup=1),
    },
)


def samples(tokenizer, corpus, split: str, max_items: int | None) -> list[str]:
    """Documents and chats (rendered with the tokenizer's own template, so training matches
    serving) of one split, each ending in <|endoftext|>, in a fixed shuffled order."""
    texts = [d + EOT for d in corpus.documents[split][:max_items]]
    texts += [tokenizer.apply_chat_template(c, tokenize=False) + EOT for c in corpus.chats[split][:max_items]]
    random.Random(SEED).shuffle(texts)  # interleave, so any prefix of training sees both kinds
    return texts


def to_blocks(tokenizer, texts: list[str], context: int) -> torch.Tensor:
    """Concatenate the token ids of all texts and cut them into [n, context] training blocks."""
    # The backend tokenizer directly: the wrapper warns about every text longer than the context.
    ids = [i for enc in tokenizer.backend_tokenizer.encode_batch(texts) for i in enc.ids]
    n = len(ids) // context
    return torch.tensor(ids[: n * context], dtype=torch.long).view(n, context)


def gpt2_config(spec: ModelSpec, tokenizer, context: int) -> GPT2Config:
    eot, im_end = tokenizer.convert_tokens_to_ids([EOT, IM_END])
    return GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=context,
        n_embd=spec.n_embd,
        n_layer=spec.n_layer,
        n_head=spec.n_head,
        # Under two passes over the data: too few to overfit, so dropout would only slow learning.
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eot,
        eos_token_id=im_end,
        pad_token_id=eot,
    )


@torch.no_grad()
def evaluate(model, blocks: torch.Tensor, batch_size: int = 16) -> float:
    """Mean next-token loss (nats) over all blocks."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        batch = blocks[i : i + batch_size]
        n_tokens = batch.numel() - len(batch)  # no target for each block's first token
        total += model(input_ids=batch, labels=batch).loss.item() * n_tokens
        count += n_tokens
    model.train()
    return total / count


def train_model(
    name: str, spec: ModelSpec, tokenizer, train: torch.Tensor, val: torch.Tensor, context: int
) -> tuple[GPT2LMHeadModel, dict]:
    torch.manual_seed(SEED)  # per model, so each init is independent of what trained before
    model = GPT2LMHeadModel(gpt2_config(spec, tokenizer, context))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]  # biases and LayerNorm gains
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=spec.lr,
        betas=(0.9, 0.95),
    )
    sched = transformers.get_cosine_schedule_with_warmup(optim, spec.warmup, spec.steps)
    order = torch.Generator().manual_seed(SEED)  # data order independent of model init

    start = time.perf_counter()
    perm, pos = torch.randperm(len(train), generator=order), 0
    bar = tqdm(range(spec.steps), desc=f"train {name}", unit="step")
    for _ in bar:
        if pos + spec.batch_size > len(perm):  # next epoch
            perm, pos = torch.randperm(len(train), generator=order), 0
        batch = train[perm[pos : pos + spec.batch_size]]
        pos += spec.batch_size
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        sched.step()
        optim.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    train_seconds = time.perf_counter() - start

    val_loss = evaluate(model, val)
    return model, {
        "params": sum(p.numel() for p in model.parameters()),
        **asdict(spec),
        "context": context,
        "train_tokens_seen": spec.steps * spec.batch_size * context,
        "val_loss": round(val_loss, 4),
        "val_perplexity": round(math.exp(val_loss), 2),
        "train_seconds": round(train_seconds, 1),
    }


def save(model: GPT2LMHeadModel, tokenizer, out: Path) -> None:
    eot, im_end = tokenizer.convert_tokens_to_ids([EOT, IM_END])
    model.generation_config = GenerationConfig(
        bos_token_id=eot,
        eos_token_id=[im_end, eot],
        pad_token_id=eot,
    )
    model.save_pretrained(out)  # transformers 5 always writes model.safetensors
    # save_jinja_files=False keeps chat_template inside tokenizer_config.json (see ARCHITECTURE.md).
    tokenizer.save_pretrained(out, save_jinja_files=False)
    # transformers 5 records its internal class name; the public alias also loads in 4.x.
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def run(out: Path, spec: RunSpec) -> dict:
    # Global torch settings; put back afterwards so callers (tests) are left as they were.
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(2)  # fixed, so float reductions split the same way on every machine
    torch.use_deterministic_algorithms(True)
    try:
        return _run(out, spec)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _run(out: Path, spec: RunSpec) -> dict:
    started = time.perf_counter()

    print("building corpus from the standard library ...")
    corpus = build_corpus()
    write_eval_jsonl(corpus.eval_rows, out / "eval.jsonl")

    print("training tokenizer ...")
    tok_texts = corpus.documents["train"][: spec.max_items] + [
        m["content"] for c in corpus.chats["train"][: spec.max_items] for m in c
    ]
    tokenizer = train_tokenizer(tok_texts, spec.vocab_size, spec.context)
    train = to_blocks(tokenizer, samples(tokenizer, corpus, "train", spec.max_items), spec.context)
    val = to_blocks(tokenizer, samples(tokenizer, corpus, "val", spec.max_items), spec.context)
    val = val[: spec.val_blocks]
    print(f"train: {train.numel():,} tokens; val: {val.numel():,} tokens")

    model_metrics: dict[str, dict] = {}
    metrics: dict[str, object] = {
        "seed": SEED,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "vocab_size": len(tokenizer),
        "train_tokens": train.numel(),
        "val_tokens": val.numel(),
        "models": model_metrics,
    }
    for name, model_spec in spec.models.items():
        model, m = train_model(name, model_spec, tokenizer, train, val, spec.context)
        save(model, tokenizer, out / name)
        model_metrics[name] = m
    metrics["total_seconds"] = round(time.perf_counter() - started, 1)

    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    for name, m in model_metrics.items():
        print(
            f"{name:5}: {m['params']:>9,} params  val loss {m['val_loss']:.3f}  "
            f"val perplexity {m['val_perplexity']:.2f}  ({m['train_seconds']:.0f} s)"
        )
    print(f"total {metrics['total_seconds']:.0f} s -> {out}")
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "artifacts")
    parser.add_argument("--quick", action="store_true", help="tiny models, a few steps (tests)")
    args = parser.parse_args()
    run(args.out, QUICK if args.quick else FULL)


if __name__ == "__main__":
    main()
