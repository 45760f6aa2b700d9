"""The models a caller can name, as both edges list them: chat models, embedding models and
``auto`` (the router's choice)."""

from __future__ import annotations

from dataclasses import dataclass

from mesh.catalog import AUTO_MODEL
from mesh.settings import MeshSettings

OWNER = "llmesh"


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    # "chat", "embedding", or "router" (auto).
    kind: str
    owned_by: str = OWNER
    context_length: int = 0
    price_input_per_1k: float = 0.0
    price_output_per_1k: float = 0.0
    dimensions: int = 0


def catalog_entries(settings: MeshSettings) -> list[CatalogEntry]:
    chat = [
        CatalogEntry(
            model.name,
            "chat",
            context_length=model.context_length,
            price_input_per_1k=model.price_input_per_1k,
            price_output_per_1k=model.price_output_per_1k,
        )
        for model in settings.models
    ]
    embedding = [
        CatalogEntry(
            model.name,
            "embedding",
            context_length=model.context_length,
            price_input_per_1k=model.price_input_per_1k,
            dimensions=model.dimensions,
        )
        for model in settings.embedding_models
    ]
    return [*chat, *embedding, CatalogEntry(AUTO_MODEL, "router")]
