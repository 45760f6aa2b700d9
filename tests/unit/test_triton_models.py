"""The Triton model code outside Triton: sampling, stop strings, generation loop, scoring."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from services.inference.triton_models import common
from services.inference.triton_models.generate import GenerationParams, StopMatcher, generate, sample_token
from services.inference.triton_models.score import Scorer
from services.inference.triton_server import SYS_PATH_ENV, TritonServer, server_env, stub_sys_path

VOCAB = 64
CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ."


def decode(ids):  # one character per token id
    return "".join(CHARS[i % len(CHARS)] for i in ids)


@pytest.fixture(scope="module")
def tiny_lm():
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    return GPT2LMHeadModel(cfg).eval()


# --- sampling -------------------------------------------------------------------------------


def test_greedy_is_argmax():
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    assert sample_token(logits, 0.0, 1.0, torch.Generator().manual_seed(0)) == 1


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()
    seen = {sample_token(logits, 1.0, 0.7, torch.Generator().manual_seed(s)) for s in range(300)}
    # 0.5 < 0.7, so the token that crosses 0.7 (0.3) is included; nothing after it
    assert seen == {0, 1}
    seen = {sample_token(logits, 1.0, 0.01, torch.Generator().manual_seed(s)) for s in range(50)}
    assert seen == {0}


def test_seeded_sampling_replays():
    logits = torch.randn(VOCAB)
    a = [sample_token(logits, 0.8, 0.9, g) for g in [torch.Generator().manual_seed(5)] for _ in range(20)]
    b = [sample_token(logits, 0.8, 0.9, g) for g in [torch.Generator().manual_seed(5)] for _ in range(20)]
    assert a == b


def test_params_are_validated():
    for bad in (GenerationParams(-1), GenerationParams(4, temperature=-0.5), GenerationParams(4, top_p=0.0),
                GenerationParams(4, top_p=1.5), GenerationParams(4, temperature=math.nan)):  # fmt: skip
        with pytest.raises(ValueError):
            bad.validate()


# --- stop strings ---------------------------------------------------------------------------


def feed(matcher, text):
    sent, hit = [], False
    for ch in text:
        ids, _, hit = matcher.push(CHARS.index(ch), -1.0)
        sent.extend(ids)
        if hit:
            break
    return decode(sent), hit


def test_stop_string_is_never_emitted_even_in_part():
    m = StopMatcher(decode, ["END"])
    out, hit = feed(m, "abcENxyEND")
    assert hit and out == "abcENxy"


def test_prefix_of_stop_string_is_held_then_released():
    m = StopMatcher(decode, ["END"])
    ids, _, hit = m.push(CHARS.index("E"), -1.0)
    assert ids == [] and not hit  # could become "END"
    ids, _, hit = m.push(CHARS.index("N"), -1.0)
    assert ids == [] and not hit
    ids, _, hit = m.push(CHARS.index("x"), -1.0)
    assert decode(ids) == "ENx" and not hit


def test_flush_releases_held_text_when_generation_ends():
    m = StopMatcher(decode, ["END"])
    out, hit = feed(m, "abE")
    assert out == "ab" and not hit
    assert decode(m.flush()[0]) == "E"


def test_earliest_of_several_stop_strings_wins():
    m = StopMatcher(decode, ["zz", "b c"])
    out, hit = feed(m, "ab czz")
    assert hit and out == "a"


def test_multi_character_tokens_straddling_a_stop_are_dropped():
    vocab = {0: "hel", 1: "lo wo", 2: "rld"}
    m = StopMatcher(lambda ids: "".join(vocab[i] for i in ids), ["o w"])
    assert m.push(0, -1.0)[0] == [0]
    ids, _, hit = m.push(1, -1.0)
    assert hit and ids == []  # "lo wo" holds the stop; "l" before it goes with it


def test_incomplete_utf8_is_held():
    # byte-level BPE: a token can end mid-character, which decodes to U+FFFD
    pieces = {0: b"a", 1: "你".encode()[:2], 2: "你".encode()[2:]}
    dec = lambda ids: b"".join(pieces[i] for i in ids).decode("utf-8", "replace")  # noqa: E731
    m = StopMatcher(dec, ["你"])
    assert m.push(0, -1.0)[0] == [0]
    assert m.push(1, -1.0)[:2] == ([], [])
    ids, _, hit = m.push(2, -1.0)
    assert hit and ids == []


# --- generation loop ------------------------------------------------------------------------


def run(model, prompt, params, **kw):
    chunks = list(generate(model, prompt, params, eos_ids=kw.pop("eos_ids", set()), decode=decode, **kw))
    return [t for c in chunks for t in c.token_ids], chunks


def test_greedy_matches_full_recompute(tiny_lm):
    prompt = [1, 2, 3, 4]
    ids, chunks = run(tiny_lm, prompt, GenerationParams(8, temperature=0.0))
    assert len(ids) == 8 and chunks[-1].finish_reason == "length"
    assert all(c.finish_reason == "" for c in chunks[:-1])
    # the KV-cache path must pick what a from-scratch forward pass picks
    seq = list(prompt)
    with torch.inference_mode():
        for _ in range(8):
            seq.append(int(tiny_lm(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
    assert ids == seq[len(prompt) :]


def test_logprobs_are_the_models(tiny_lm):
    prompt = [5, 6]
    ids, chunks = run(tiny_lm, prompt, GenerationParams(1, temperature=0.0))
    with torch.inference_mode():
        want = torch.log_softmax(tiny_lm(input_ids=torch.tensor([prompt])).logits[0, -1], -1)[ids[0]]
    assert chunks[-1].logprobs[0] == pytest.approx(float(want), abs=1e-5)


def test_seed_reproducible_and_eos_stops(tiny_lm):
    p = GenerationParams(12, temperature=1.0, top_p=0.95, seed=42)
    a, _ = run(tiny_lm, [1, 2], p)
    b, _ = run(tiny_lm, [1, 2], p)
    assert a == b
    eos = a[3]
    c, chunks = run(tiny_lm, [1, 2], p, eos_ids={eos})
    assert chunks[-1].finish_reason == "stop" and eos not in c and c == a[: a.index(eos)]


def test_context_limit(tiny_lm):
    ids, chunks = run(tiny_lm, list(range(30)), GenerationParams(10, temperature=0.0), max_context=32)
    assert len(ids) == 2 and chunks[-1].finish_reason == "length"
    with pytest.raises(ValueError, match="context"):
        run(tiny_lm, list(range(32)), GenerationParams(4), max_context=32)


def test_zero_max_tokens_and_cancel(tiny_lm):
    ids, chunks = run(tiny_lm, [1], GenerationParams(0))
    assert ids == [] and chunks[-1].finish_reason == "length"
    ids, chunks = run(tiny_lm, [1], GenerationParams(50, temperature=0.0), cancelled=lambda: True)
    assert chunks == []


def test_stop_string_in_generation(tiny_lm):
    full, _ = run(tiny_lm, [1, 2, 3], GenerationParams(16, temperature=0.0))
    text = decode(full)
    stop = text[5:7]
    ids, chunks = run(tiny_lm, [1, 2, 3], GenerationParams(16, temperature=0.0, stop=[stop]))
    assert chunks[-1].finish_reason == "stop"
    assert decode(ids) == text[: text.find(stop)]


# --- scoring --------------------------------------------------------------------------------


def reference_logprobs(model, seq):
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([seq])).logits[0, :-1]
        return torch.log_softmax(logits, -1).gather(-1, torch.tensor(seq[1:])[:, None])[:, 0].numpy()


def test_padded_batch_equals_one_by_one(tiny_lm):
    scorer = Scorer(tiny_lm)
    assert scorer.split_head
    rng = np.random.default_rng(1)
    seqs = [list(rng.integers(0, VOCAB, n)) for n in (1, 2, 9, 32, 5)]
    got = scorer.score(seqs)
    assert got[0].shape == (0,)
    for seq, lp in zip(seqs[1:], got[1:]):
        np.testing.assert_allclose(lp, reference_logprobs(tiny_lm, seq), atol=1e-5)


def test_long_sequences_use_sliding_windows(tiny_lm):
    scorer = Scorer(tiny_lm, max_batch_tokens=64)  # small budget: several forward passes
    seq = list(np.random.default_rng(2).integers(0, VOCAB, 100))
    assert scorer.windows(100)[0] == (0, 32, 1)
    covered = [s + i for s, e, f in scorer.windows(100) for i in range(f, e - s)]
    assert covered == list(range(1, 100))
    (lp,) = scorer.score([seq])
    assert lp.shape == (99,) and np.isfinite(lp).all()
    np.testing.assert_allclose(lp[:31], reference_logprobs(tiny_lm, seq[:32]), atol=1e-5)
    np.testing.assert_allclose(lp[31:47], reference_logprobs(tiny_lm, seq[16:48])[15:], atol=1e-5)


def test_scorer_rejects_bad_ids(tiny_lm):
    scorer = Scorer(tiny_lm)
    with pytest.raises(ValueError):
        scorer.check([])
    with pytest.raises(ValueError, match="out of range"):
        scorer.check([1, VOCAB])


# --- configuration --------------------------------------------------------------------------


def test_model_dir_resolution(tmp_path, monkeypatch):
    for d in ("a", "b", "c"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "config.json").write_text("{}")
    cfg = {"name": "m", "parameters": {"model_dir": {"string_value": str(tmp_path / "a")},
                                       "model_dir.v2": {"string_value": str(tmp_path / "b")},
                                       "model_dir_env": {"string_value": "LLMESH_TEST_MODEL_DIR"}}}  # fmt: skip
    monkeypatch.delenv(common.GLOBAL_OVERRIDE_ENV, raising=False)
    monkeypatch.delenv("LLMESH_TEST_MODEL_DIR", raising=False)
    assert common.resolve_model_dir(cfg, "1") == tmp_path / "a"
    assert common.resolve_model_dir(cfg, "2") == tmp_path / "b"
    monkeypatch.setenv(common.GLOBAL_OVERRIDE_ENV, str(tmp_path / "c"))
    assert common.resolve_model_dir(cfg, "2") == tmp_path / "c"
    monkeypatch.setenv("LLMESH_TEST_MODEL_DIR", str(tmp_path / "a"))
    assert common.resolve_model_dir(cfg, "2") == tmp_path / "a"
    monkeypatch.setenv("LLMESH_TEST_MODEL_DIR", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="LLMESH_TEST_MODEL_DIR"):
        common.resolve_model_dir(cfg)


def test_default_model_dirs_are_the_artifacts():
    repo = Path(__file__).resolve().parents[2] / "services" / "inference" / "model_repository"
    for name, size in (("llmesh-small", "small"), ("llmesh-large", "large"), ("llmesh-small-score", "small")):
        text = (repo / name / "config.pbtxt").read_text()
        assert f'string_value: "models/artifacts/{size}"' in text
        assert (repo / name / "1" / "model.py").is_file()


def test_server_command_and_env():
    server = TritonServer(http_port=1, grpc_port=2, metrics_port=3, models=["x"], otlp_endpoint="http://h:4318")
    cmd = server.command(Path("/srv"))
    assert "--grpc-port=2" in cmd and "--load-model=x" in cmd and "--model-control-mode=explicit" in cmd
    pairs = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--trace-config"]
    assert "mode=opentelemetry" in pairs and "opentelemetry,url=http://h:4318/v1/traces" in pairs
    assert "opentelemetry,resource=service.name=triton" in pairs
    assert "--trace-config" not in TritonServer(models=["x"]).command(Path("/srv"))

    import sysconfig

    env = server_env({"LD_LIBRARY_PATH": "/other"})
    ld = env["LD_LIBRARY_PATH"].split(":")
    assert ld[0] == sysconfig.get_config_var("LIBDIR") and ld[1].endswith("nvidia_pytriton.libs")
    assert ld[-1] == "/other"
    entries = env[SYS_PATH_ENV].split(":")
    assert entries[0] == str(Path(common.__file__).resolve().parents[3])
    assert all(Path(p).is_dir() for p in entries)
    assert entries == stub_sys_path()
    import numpy

    numpy_home = str(Path(numpy.__file__).resolve().parents[1])
    assert any(Path(p).resolve() == Path(numpy_home) for p in entries), "the numpy<2 in use must be on it"
    assert sys.flags.isolated == 0


def test_model_py_entry_points_import(monkeypatch):
    import importlib.util

    repo = Path(__file__).resolve().parents[2] / "services" / "inference" / "model_repository"
    monkeypatch.setattr(sys, "path", list(sys.path))  # model.py rewrites sys.path
    monkeypatch.setenv(SYS_PATH_ENV, "")
    for name in ("llmesh-small", "llmesh-large", "llmesh-small-score"):
        spec = importlib.util.spec_from_file_location(f"_model_{name}", repo / name / "1" / "model.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert callable(module.TritonPythonModel().execute)


def test_prepare_server_dir(tmp_path):
    import os

    from services.inference.triton_server import prepare_server_dir

    work = prepare_server_dir(tmp_path / "ts")
    stub = work / "backends" / "python" / "triton_python_backend_stub"
    assert os.access(work / "bin" / "tritonserver", os.X_OK) and os.access(stub, os.X_OK)
    assert not (work / "python_backend_stubs").exists()
    mtime = stub.stat().st_mtime_ns
    assert prepare_server_dir(tmp_path / "ts") == work and stub.stat().st_mtime_ns == mtime  # copied once
    assert [p.name for p in tmp_path.iterdir()] == ["ts"]  # no temporary copies left behind
