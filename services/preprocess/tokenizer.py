"""The tokenizer every catalog model shares, for preprocess (chat template, tokenization) and
postprocess (detokenization)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from mesh.errors import abort
from mesh.settings import MeshSettings

log = logging.getLogger(__name__)


class TokenizerSettings(MeshSettings):
    # A Hugging Face tokenizer directory (with its chat template); unset means the first
    # catalog model's directory, since every model shares that tokenizer.
    tokenizer_dir: Path | None = None

    def tokenizer_path(self) -> Path:
        return self.tokenizer_dir or self.default_model().resolved_dir()


class Tokenizers:
    """Loads the shared tokenizer off the event loop and hands it out by tokenizer name: empty
    for the default, or the name of any catalog model."""

    def __init__(self, settings: TokenizerSettings) -> None:
        self.path = settings.tokenizer_path()
        self.names = {"", *(model.name for model in settings.models)}
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self._loading: asyncio.Task | None = None

    async def ready(self) -> bool:
        """Whether the tokenizer is loaded. Called by the health watcher, so loading starts with
        the server and is retried after a failure (the directory may not exist yet)."""
        if self.tokenizer is not None:
            return True
        if self._loading is None:
            self._loading = asyncio.create_task(asyncio.to_thread(AutoTokenizer.from_pretrained, str(self.path)))
        if not self._loading.done():
            return False
        loading, self._loading = self._loading, None
        self.tokenizer = loading.result()  # a failure propagates to the watcher, which logs it
        log.info("tokenizer loaded", extra={"path": str(self.path)})
        return True

    async def get(self, name: str, context: grpc.aio.ServicerContext) -> PreTrainedTokenizerBase:
        """The tokenizer called ``name``, or the call aborted."""
        if name not in self.names:
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, f"unknown tokenizer {name!r}", "UNKNOWN_TOKENIZER",
                tokenizer=name,
            )
        if self.tokenizer is None:
            # UNAVAILABLE: the channel's retry policy tries again, which is right while starting.
            await abort(context, grpc.StatusCode.UNAVAILABLE, "tokenizer not loaded yet", "TOKENIZER_NOT_READY")
        return self.tokenizer

    def close(self) -> None:
        if self._loading is not None:
            self._loading.cancel()
