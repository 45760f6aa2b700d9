"""Streaming output: token ids in, text out, never a partial character or a partial blocked term."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from services.safety.lexicon import Lexicon, Match

REPLACEMENT_CHAR = "\ufffd"

# Released text kept as the left context of held text: a whole-word term needs the character
# before it, which may sit behind a few invisible ones.
CONTEXT_CHARS = 16


class IncrementalDetokenizer:
    """Decodes token ids as they arrive. A byte-level BPE token can hold part of a UTF-8
    character, which decodes to U+FFFD until its last byte arrives: text is released up to
    such a pending character, never into it."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        # Only ids[_start:] are decoded, so a long answer costs O(n) and not O(n^2). The window
        # starts where the text last ended on a whole character but one (_boundary is the
        # last): so it starts on a character boundary, and keeps a chunk of tokens as context
        # (SentencePiece decodes a word's leading space only after another token).
        self._start = 0
        self._boundary = 0
        # How much of the window's text has been returned already.
        self._released = 0

    def push(self, token_ids: Sequence[int], final: bool = False) -> str:
        """The text these ids complete; ``final`` releases even an incomplete last character."""
        self._ids.extend(token_ids)
        text = self._decode()
        stable = text if final else text.rstrip(REPLACEMENT_CHAR)
        delta, self._released = stable[self._released :], len(stable)
        if stable == text:
            self._start, self._boundary = self._boundary, len(self._ids)
            self._released = len(self._decode())
        return delta

    def _decode(self) -> str:
        return self._tokenizer.decode(self._ids[self._start :], skip_special_tokens=True)


class HoldBackBuffer:
    """Releases streamed text only once no blocked term could still be completed by text yet to
    come: the longest end of the text that could begin a term is held back."""

    def __init__(self, lexicon: Lexicon) -> None:
        self._lexicon = lexicon
        self._context = ""
        self._held = ""

    def push(self, text: str, final: bool = False) -> tuple[str, Match | None]:
        """Add ``text``; return what is now safe to release, or the term that blocks the stream
        (then nothing of it has been released). ``final``: no more text follows."""
        self._held += text
        window = self._context + self._held
        match = self._lexicon.find(window, complete=final, since=len(self._context))
        if match is not None:
            return "", match
        hold_from = len(window) if final else self._lexicon.unsafe_suffix_start(window)
        cut = max(hold_from - len(self._context), 0)
        released, self._held = self._held[:cut], self._held[cut:]
        self._context = (self._context + released)[-CONTEXT_CHARS:]
        return released, None


class ModeratedDecoder:
    """Token ids in, releasable text out: detokenization, then the hold-back buffer."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, lexicon: Lexicon) -> None:
        self._detokenizer = IncrementalDetokenizer(tokenizer)
        self._buffer = HoldBackBuffer(lexicon)

    def push(self, token_ids: Sequence[int], final: bool = False) -> tuple[str, Match | None]:
        return self._buffer.push(self._detokenizer.push(token_ids, final), final)
