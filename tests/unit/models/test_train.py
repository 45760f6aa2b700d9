"""The model-building pipeline: corpus determinism and splits, and a --quick training run whose
outputs must load and generate like the committed artifacts do."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from models import corpus as corpus_mod
from models.train import QUICK, run

MESSAGES = [{"role": "user", "content": "What does `json.dumps` do?"}]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("artifacts")
    metrics = run(out, QUICK)
    return out, metrics


@pytest.fixture(scope="module")
def items():
    return corpus_mod.harvest()


def test_harvest_is_deterministic(items):
    assert items == corpus_mod.harvest()  # a fresh interpreter each time
    assert [it.name for it in items] == sorted(it.name for it in items)
    names = {it.name for it in items}
    assert {"json.dumps", "os.path.join", "len", "str.join", "topic:assert"} <= names
    assert not any(part in names for part in ("antigravity", "this", "tkinter"))


def test_eval_split_is_held_out(items):
    corpus = corpus_mod.build_corpus(items)
    assert 0 < len(corpus.eval_rows) <= corpus_mod.EVAL_MAX_ITEMS
    train_names = {it.name for it in items if corpus_mod.split_of(it.name) == "train"}
    train_answers = {c[1]["content"] for c in corpus.chats["train"]}
    train_text = set(corpus.documents["train"])
    for row in corpus.eval_rows:
        assert set(row) == {"prompt", "reference", "source"}
        assert corpus_mod.split_of(row["source"]) == "eval"
        assert row["source"] not in train_names
        assert row["reference"] not in train_answers
    eval_docs = [corpus_mod.document_for(it) for it in items if corpus_mod.split_of(it.name) == "eval"]
    assert not train_text & set(eval_docs)
    assert corpus_mod.build_corpus(items).eval_rows == corpus.eval_rows


def test_quick_model_loads_and_generates(quick_run):
    out, _ = quick_run
    tok = AutoTokenizer.from_pretrained(out / "small")
    model = AutoModelForCausalLM.from_pretrained(out / "small")

    text = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nWhat does `json.dumps` do?<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")  # special tokens stay whole
    assert tok.eos_token == "<|im_end|>"

    stop_ids = set(model.generation_config.eos_token_id)
    assert stop_ids == {tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")}
    prompt = torch.tensor([ids])
    generated = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > prompt.shape[1]
    assert tok.decode(generated[0, prompt.shape[1] :]) is not None


def test_quick_run_writes_metrics_and_eval(quick_run):
    out, metrics = quick_run
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["models"].keys() == {"small"}
    # vLLM's CPU attention takes heads of 32 dimensions or more.
    assert saved["models"]["small"]["n_embd"] // saved["models"]["small"]["n_head"] >= 32
    assert saved == metrics
    rows = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert rows and all(r["prompt"] and r["reference"] for r in rows)
