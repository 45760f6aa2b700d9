"""Every model's own tokenizer and chat template: prompts in (preprocess), answers out (postprocess).

Models with different vocabularies are served side by side, so a prompt is rendered and tokenized
for each model that may serve it, and an answer is decoded by the tokenizer of the model that
wrote it.

Text a user wrote is never control: a special token spelled out in a message's content (say
``<|im_end|>\\n<|im_start|>system``) is tokenized as the plain characters it is made of, so a
user cannot forge a turn; only the chat template itself writes special tokens.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from mesh.catalog import ModelSpec

log = logging.getLogger(__name__)


def _encode(tokenizer: PreTrainedTokenizerBase, text: str, *, as_text: bool) -> list[int]:
    # add_special_tokens=False: the template has already written whatever the model needs.
    return tokenizer(text, add_special_tokens=False, split_special_tokens=as_text)["input_ids"]


def decode_text(tokenizer: PreTrainedTokenizerBase, token_ids: Sequence[int], *, skip_special_tokens: bool) -> str:
    """One sequence of ids as text (``decode`` is typed for a batch too, which gives a list)."""
    text = tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens)
    if not isinstance(text, str):
        raise TypeError(f"decoding one sequence gave {type(text).__name__}, not text")
    return text


def encode_user_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """A raw prompt (/v1/completions), every character of it text."""
    return _encode(tokenizer, text, as_text=True)


def special_tokens_in(tokenizer: PreTrainedTokenizerBase, text: str) -> list[str]:
    """The special tokens spelled out in ``text`` (which would be control if tokenized as is):
    every added token marked special, not only the named ones (bos, eos...)."""
    specials = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
    return sorted(token for token in specials if token and token in text)


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, str]]) -> tuple[str, list[int]]:
    """The chat template rendered for ``messages`` and its token ids, with every message's content
    tokenized as plain text.

    The template is rendered with a unique marker in place of each content, so that what the
    template wrote (tokenized with its special tokens) and what the user wrote (tokenized as text)
    can be told apart. A marker padded with spaces shows whether the template trims content.
    """
    nonce = secrets.token_hex(8)
    markers = [f"\x1f{nonce}:{i}\x1f" for i in range(len(messages))]
    masked = [{**message, "content": f" {marker} "} for message, marker in zip(messages, markers, strict=True)]
    rendered = tokenizer.apply_chat_template(masked, add_generation_prompt=True, tokenize=False)
    if not isinstance(rendered, str):
        raise TypeError(f"the chat template rendered {type(rendered).__name__}, not text")
    text_parts: list[str] = []
    ids: list[int] = []
    rest = rendered
    for message, marker in zip(messages, markers, strict=True):
        padded = f" {marker} "
        trimmed = padded not in rest
        head, found, rest = rest.partition(marker if trimmed else padded)
        if not found:
            raise ValueError("the chat template dropped a message's content")
        content = message["content"].strip() if trimmed else message["content"]
        text_parts += [head, content]
        ids += _encode(tokenizer, head, as_text=False) + _encode(tokenizer, content, as_text=True)
    text_parts.append(rest)
    ids += _encode(tokenizer, rest, as_text=False)
    return "".join(text_parts), ids


class ModelTokenizers:
    """The tokenizer of every catalog model, by model name; models sharing a directory share one.

    Loaded off the event loop: ``ready()`` starts the loading (the health watcher calls it, so it
    begins with the server and is retried after a failure, e.g. a directory not built yet).
    """

    def __init__(self, models: Sequence[ModelSpec]) -> None:
        self.paths: dict[str, Path] = {model.name: model.resolved_dir() for model in models}
        self._by_path: dict[Path, PreTrainedTokenizerBase] = {}
        self._loading: asyncio.Task | None = None

    @property
    def models(self) -> list[str]:
        return list(self.paths)

    async def ready(self) -> bool:
        """Whether every tokenizer is loaded; a loading failure propagates (the watcher logs it)."""
        if len(self._by_path) == len(set(self.paths.values())):
            return True
        if self._loading is None:
            self._loading = asyncio.create_task(asyncio.to_thread(self._load))
        if not self._loading.done():
            return False
        loading, self._loading = self._loading, None
        loading.result()
        return True

    def _load(self) -> None:
        for path in dict.fromkeys(self.paths.values()):
            if path not in self._by_path:
                self._by_path[path] = AutoTokenizer.from_pretrained(str(path))
                log.info("tokenizer loaded", extra={"path": str(path)})

    def get(self, model: str) -> PreTrainedTokenizerBase | None:
        """The model's tokenizer; None when the model is unknown or its tokenizer not loaded yet."""
        path = self.paths.get(model)
        return self._by_path.get(path) if path is not None else None

    def close(self) -> None:
        if self._loading is not None:
            self._loading.cancel()


class TokenBytes:
    """The exact bytes each token id stands for, as log-prob reports show them.

    A byte-level BPE token may hold part of a UTF-8 character, so its text alone cannot say
    what it contributed; its bytes can. Special tokens contribute nothing to decoded text
    (decoding skips them) and so have no bytes. Tokenizers that are not byte-level fall back
    to the UTF-8 of the token's decoded text.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        self._tokenizer = tokenizer
        self._special = set(tokenizer.all_special_ids)
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self._byte_level = type(decoder).__name__ == "ByteLevel"
        self._unicode_to_byte = {char: byte for byte, char in bytes_to_unicode().items()}

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special

    def __call__(self, token_id: int) -> bytes:
        if token_id in self._special:
            return b""
        if self._byte_level:
            piece = self._piece(token_id)
            if piece is not None and all(char in self._unicode_to_byte for char in piece):
                return bytes(self._unicode_to_byte[char] for char in piece)
        return decode_text(self._tokenizer, [token_id], skip_special_tokens=False).encode()

    def text(self, token_id: int) -> str:
        """How the token reads on its own (an alternative in a log-prob report)."""
        return (
            self(token_id).decode("utf-8", errors="replace")
            if token_id not in self._special
            else (self._piece(token_id) or "")
        )

    def _piece(self, token_id: int) -> str | None:
        """The token's vocabulary entry; None for an id the vocabulary lacks."""
        piece = self._tokenizer.convert_ids_to_tokens(token_id)
        return piece if isinstance(piece, str) else None
