"""Per-token log-probabilities for `llmesh-small-score` (the router's perplexity signal).

Every request of one execute() (Triton's dynamic batcher gathers up to max_batch_size) goes
through one right-padded forward pass (split only past `max_batch_tokens`). Output per
sequence: log p(token_i | tokens_<i) for i = 1..n-1, so perplexity = exp(-mean(token_logprobs)).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .common import (
    Log,
    check_numpy,
    config_param,
    context_length,
    load_causal_lm,
    parse_model_config,
    pb_utils,
    resolve_model_dir,
)


class Scorer:
    """Scores sequences of any length: longer than the model's context, a sequence is cut into
    windows of `context` tokens with a stride of half that, and each token is scored once, in
    the first window where it has at least half a context of history (the Hugging Face
    perplexity recipe). Shorter sequences are scored exactly."""

    def __init__(self, model: Any, pad_id: int = 0, max_batch_tokens: int = 16384) -> None:
        self.model = model
        self.pad_id = pad_id
        self.max_batch_tokens = max_batch_tokens
        self.max_context = context_length(model)
        self.vocab_size = int(model.config.vocab_size)
        # Logits for a whole batch are rows x length x vocab floats (32 x 512 x 32k = 2 GiB);
        # running the trunk once and the LM head one row at a time keeps that to length x vocab.
        # Used only where it reproduces the model's own logits (no softcapping or other
        # post-processing in the causal-LM wrapper).
        self.split_head = self._head_matches()

    def _trunk_and_head(self) -> tuple[Any, Any]:
        return self.model.base_model, self.model.get_output_embeddings()

    @torch.inference_mode()
    def _head_matches(self) -> bool:
        try:
            trunk, head = self._trunk_and_head()
            if trunk is self.model or head is None:
                return False
            ids = torch.arange(1, 9).remainder(self.vocab_size).unsqueeze(0)
            full = self.model(input_ids=ids).logits
            split = head(trunk(input_ids=ids).last_hidden_state)
            return bool(torch.allclose(full, split, atol=1e-4, rtol=1e-4))
        except Exception:  # noqa: BLE001 - any oddity: use the plain path
            return False

    def check(self, ids: Sequence[int]) -> None:
        if len(ids) == 0:
            raise ValueError("input_ids is empty")
        lo, hi = min(ids), max(ids)
        if lo < 0 or hi >= self.vocab_size:
            raise ValueError(f"token ids out of range [0, {self.vocab_size}): {lo if lo < 0 else hi}")

    def windows(self, n: int) -> list[tuple[int, int, int]]:
        """(start, end, first scored position relative to start) covering targets 1..n-1 once."""
        ctx = self.max_context
        if ctx is None or n <= ctx:
            return [(0, n, 1)]
        stride = max(1, ctx // 2)
        out, start, next_target = [], 0, 1
        while next_target < n:
            end = min(start + ctx, n)
            out.append((start, end, next_target - start))
            next_target = end
            start += stride
        return out

    @torch.inference_mode()
    def _forward(self, rows: list[Sequence[int]], spans: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Log-probs of row[i][a:b] given what precedes them, one padded forward for all rows."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
            mask[i, : len(r)] = 1
        # Right padding: real tokens keep positions 0..n-1 and, being causal, never see the pads.
        if self.split_head:
            trunk, head = self._trunk_and_head()
            hidden = trunk(input_ids=ids, attention_mask=mask).last_hidden_state
            logits_at = lambda i, a, b: head(hidden[i, a - 1 : b - 1])  # noqa: E731
        else:
            all_logits = self.model(input_ids=ids, attention_mask=mask).logits
            logits_at = lambda i, a, b: all_logits[i, a - 1 : b - 1]  # noqa: E731
        out = []
        for i, (a, b) in enumerate(spans):
            logprobs = torch.log_softmax(logits_at(i, a, b).float(), dim=-1)
            out.append(logprobs.gather(-1, ids[i, a:b].unsqueeze(-1)).squeeze(-1))
        return out

    def score(self, seqs: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """log p(t_i | t_<i), i = 1..n-1, for each sequence."""
        rows: list[Sequence[int]] = []
        spans: list[tuple[int, int]] = []
        owner: list[int] = []
        for k, seq in enumerate(seqs):
            for start, end, first in self.windows(len(seq)):
                if end - start > first:
                    rows.append(seq[start:end])
                    spans.append((first, end - start))
                    owner.append(k)
        results: dict[int, torch.Tensor] = {}
        for group in self._groups(rows):
            results.update(zip(group, self._forward([rows[j] for j in group], [spans[j] for j in group])))
        per_seq: list[list[torch.Tensor]] = [[] for _ in seqs]
        for j in range(len(rows)):  # a sequence's windows were added in order
            per_seq[owner[j]].append(results[j])
        return [torch.cat(p).numpy().astype(np.float32) if p else np.zeros((0,), np.float32) for p in per_seq]

    def _groups(self, rows: list[Sequence[int]]) -> list[list[int]]:
        """Row indices by length (less padding), cut where rows x width passes the token budget."""
        groups: list[list[int]] = []
        for i in sorted(range(len(rows)), key=lambda i: len(rows[i])):
            if groups and (len(groups[-1]) + 1) * len(rows[i]) <= self.max_batch_tokens:
                groups[-1].append(i)
            else:
                groups.append([i])
        return groups


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        check_numpy()
        cfg = parse_model_config(args)
        self.name = args["model_name"]
        self.log = Log(self.name)
        torch_threads = int(config_param(cfg, "torch_threads", "1"))
        path = resolve_model_dir(cfg, args.get("model_version"))
        started = time.monotonic()
        model, tokenizer = load_causal_lm(path, torch_threads)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.scorer = Scorer(model, pad_id=int(pad or 0),
                             max_batch_tokens=int(config_param(cfg, "max_batch_tokens", "16384")))  # fmt: skip
        self.scorer.score([[0, 0]])  # one-time init off the first client's clock
        self.log.info(
            f"loaded {path} in {time.monotonic() - started:.1f}s (split head: {self.scorer.split_head}, "
            f"context {self.scorer.max_context}, {torch_threads} torch threads)"
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        # A request may carry several rows ([b, n]); all rows of all requests form one batch.
        rows: list[list[int]] = []
        spans: list[tuple[int, int] | str] = []
        for request in requests:
            try:
                tensor = pb_utils.get_input_tensor_by_name(request, "input_ids")
                if tensor is None:
                    raise ValueError("missing input_ids")
                arr = tensor.as_numpy()
                arr = arr.reshape(1, -1) if arr.ndim == 1 else arr
                batch = [[int(t) for t in r] for r in arr]
                for r in batch:
                    self.scorer.check(r)
                spans.append((len(rows), len(rows) + len(batch)))
                rows.extend(batch)
            except Exception as e:  # noqa: BLE001 - a bad request must not fail its batch-mates
                spans.append(f"bad request: {e}")

        try:
            scores = self.scorer.score(rows) if rows else []
        except Exception as e:  # noqa: BLE001 - every error must reach the client
            message = f"{type(e).__name__}: {e}"
            self.log.error(f"scoring failed: {message}")
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(message)) for _ in requests]

        responses = []
        for span in spans:
            if isinstance(span, str):
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(span)))
                continue
            mine = scores[span[0] : span[1]]
            out = np.stack(mine) if mine else np.zeros((0, 0), dtype=np.float32)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("token_logprobs", out)]))
        return responses
