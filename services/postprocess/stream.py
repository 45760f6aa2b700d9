"""Streaming output: token ids in, text out, never a partial character or a partial blocked term."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from llmesh.common.v1 import common_pb2
from services.postprocess.logprobs import LogprobAligner, Span
from textkit.safety import pii
from textkit.safety.lexicon import Lexicon, Match
from textkit.safety.scanners import PiiAction
from textkit.tokenizers import TokenBytes, decode_text

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
        return decode_text(self._tokenizer, self._ids[self._start :], skip_special_tokens=True)


class HoldBackBuffer:
    """Releases streamed text only once no blocked term and no PII string could still be
    completed by text yet to come: the longest end of the text that could begin a term, or the
    run of characters a PII string could continue, is held back. Released PII is redacted
    (``pii_action="redact"``) or blocks the stream (``"block"``)."""

    def __init__(self, lexicon: Lexicon, pii_action: PiiAction = "off") -> None:
        self._lexicon = lexicon
        self._pii_action = pii_action
        self._context = ""
        self._held = ""
        # Kinds of PII redacted so far, for the final verdict.
        self.redacted: list[pii.PiiMatch] = []
        # How much of the text pushed has been released, and the redacted spans, both in the
        # coordinates of the text pushed (what log-prob entries are aligned to).
        self.raw_released = 0
        self.spans: list[Span] = []

    def push(self, text: str, final: bool = False) -> tuple[str, Match | list[pii.PiiMatch] | None]:
        """Add ``text``; return what is now safe to release, or what blocks the stream (a
        lexicon match, or the PII found under the block policy); nothing of it has been
        released then. ``final``: no more text follows."""
        self._held += text
        window = self._context + self._held
        match = self._lexicon.find(window, complete=final, since=len(self._context))
        if match is not None:
            return "", match
        hold_from = len(window) if final else self._lexicon.unsafe_suffix_start(window)
        if self._pii_action != "off" and not final:
            hold_from = min(hold_from, pii.unsafe_suffix_start(window))
        cut = max(hold_from - len(self._context), 0)
        released, self._held = self._held[:cut], self._held[cut:]
        if self._pii_action != "off" and released:
            # Only PII that lies wholly in the text being released: the context went out already.
            start = len(self._context)
            found = [m for m in pii.find_pii(self._context + released) if m.start >= start]
            if found and self._pii_action == "block":
                return "", found
            if found:
                self.redacted += found
                offset = self.raw_released - start
                self.spans += [Span(m.start + offset, m.end + offset, pii.placeholder(m.kind)) for m in found]
                released = pii.redact(self._context + released, found)[start:]
        self.raw_released += cut
        self._context = (self._context + released)[-CONTEXT_CHARS:]
        return released, None


class StopStrings:
    """Text up to the first stop string, never a piece of one.

    The engine stops generating once a stop string appears, but the tokens it returns still spell
    it (and possibly a few characters after it), so the text is cut here: whatever could still
    become the start of a stop string is held back, and at the first one the text ends.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [stop for stop in stops if stop]
        self._held = ""
        self.stopped = False
        # The stop string that ended the text.
        self.matched = ""

    def push(self, text: str, final: bool = False) -> str:
        if self.stopped or not self._stops:
            return "" if self.stopped else text
        self._held += text
        hits = [(index, stop) for stop in self._stops if (index := self._held.find(stop)) >= 0]
        if hits:
            cut, self.matched = min(hits)
            released, self._held, self.stopped = self._held[:cut], "", True
            return released
        keep = 0 if final else max(self._partial_stop_length(stop) for stop in self._stops)
        released, self._held = self._held[: len(self._held) - keep], self._held[len(self._held) - keep :]
        return released

    def _partial_stop_length(self, stop: str) -> int:
        """How many of the held characters at the end could begin ``stop``."""
        for size in range(min(len(stop) - 1, len(self._held)), 0, -1):
            if self._held.endswith(stop[:size]):
                return size
        return 0


def detokenize_each(
    detokenizer: IncrementalDetokenizer,
    aligner: LogprobAligner,
    token_ids: Sequence[int],
    token_logprobs: Sequence[float],
    top_logprobs: Sequence[common_pb2.TopLogprobs],
    final: bool,
) -> str:
    """Detokenize one token at a time, telling the aligner which characters each released."""
    pieces = []
    for position, token_id in enumerate(token_ids):
        piece = detokenizer.push([token_id])
        logprob = token_logprobs[position] if position < len(token_logprobs) else 0.0
        top = top_logprobs[position] if position < len(top_logprobs) else None
        alternatives = list(zip(top.token_ids, top.logprobs, strict=False)) if top is not None else []
        aligner.add(token_id, piece, logprob, alternatives)
        pieces.append(piece)
    if final:
        rest = detokenizer.push([], final=True)
        aligner.extend_last(rest)
        pieces.append(rest)
    return "".join(pieces)


class ModeratedDecoder:
    """Token ids in, releasable text out: detokenization, stop strings, then the hold-back buffer.

    With ``logprobs``, each push also returns the log-prob entries of the text released, and
    the text released is exactly what those entries spell (text that is out of the buffer but
    whose last token is not complete yet waits for it).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        lexicon: Lexicon,
        pii_action: PiiAction = "off",
        stop: Sequence[str] = (),
        logprobs: bool = False,
    ) -> None:
        self._detokenizer = IncrementalDetokenizer(tokenizer)
        self.stops = StopStrings(stop)
        self.buffer = HoldBackBuffer(lexicon, pii_action)
        self._aligner = LogprobAligner(TokenBytes(tokenizer), lexicon) if logprobs else None

    def push(self, token_ids: Sequence[int], final: bool = False) -> tuple[str, Match | list[pii.PiiMatch] | None]:
        text, match, _ = self.push_with_logprobs(token_ids, (), (), final)
        return text, match

    def push_with_logprobs(
        self,
        token_ids: Sequence[int],
        token_logprobs: Sequence[float],
        top_logprobs: Sequence[common_pb2.TopLogprobs],
        final: bool = False,
    ) -> tuple[str, Match | list[pii.PiiMatch] | None, list[common_pb2.TokenLogprob]]:
        if self._aligner is None:
            text = self._detokenizer.push(token_ids, final)
        else:
            text = detokenize_each(self._detokenizer, self._aligner, token_ids, token_logprobs, top_logprobs, final)
        released, match = self.buffer.push(self.stops.push(text, final), final)
        if self._aligner is None or match is not None:
            return released, match, []
        entries = self._aligner.release(self.buffer.raw_released, self.buffer.spans, final)
        return "".join(entry.token for entry in entries), None, entries
