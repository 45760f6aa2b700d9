"""Log-prob entries that spell exactly the text postprocess releases.

The engine reports a log-prob (and alternatives) per generated token, but what leaves is not
the tokens' text: a stop string cuts it, PII is redacted, held-back text is not out yet. Each
token's characters are known from the detokenizer (fed one token at a time), so entries are
made in the detokenized text's coordinates and released only as far as the text itself is:

- a token wholly in released text is one entry, with its own bytes and safe alternatives;
- a token cut by the end of the text (a stop string) keeps only its released characters;
- the tokens of a redacted span, with whatever else those tokens hold, become one entry that
  spells the released text there (the placeholder), with their summed log-prob (the span's
  joint probability) and no alternatives: nothing of the redacted text leaves through them;
- alternatives that the output lexicon blocks, or that spell part of redacted text, are left out;
- special tokens (the end of turn) decode to nothing and get no entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from llmesh.common.v1 import common_pb2
from textkit.safety.lexicon import Lexicon
from textkit.tokenizers import TokenBytes

# An alternative whose text (stripped) is at least this long and occurs in redacted text is
# left out: it could spell the redacted value one token at a time.
_MIN_LEAK_CHARS = 3


@dataclass(frozen=True)
class Span:
    """A redacted stretch of detokenized text and what replaced it."""

    start: int
    end: int
    placeholder: str


@dataclass
class _Token:
    token_id: int
    start: int
    end: int
    logprob: float
    alternatives: list[tuple[int, float]] = field(default_factory=list)


class LogprobAligner:
    def __init__(self, token_bytes: TokenBytes, lexicon: Lexicon | None = None) -> None:
        self._bytes = token_bytes
        self._lexicon = lexicon
        self._tokens: list[_Token] = []
        # The detokenized text so far (raw: before stop strings and redaction).
        self.raw = ""
        # Redacted raw text seen so far, lower-cased, for the alternatives' leak check.
        self._redacted: list[str] = []

    def add(self, token_id: int, text: str, logprob: float, alternatives: Sequence[tuple[int, float]] = ()) -> None:
        """One generated token and the characters the detokenizer released for it."""
        start = len(self.raw)
        self.raw += text
        self._tokens.append(_Token(token_id, start, len(self.raw), logprob, list(alternatives)))

    def extend_last(self, text: str) -> None:
        """Characters released only when the text ended (an incomplete last character)."""
        if text and self._tokens:
            self.raw += text
            self._tokens[-1].end = len(self.raw)

    def release(self, released_to: int, spans: Sequence[Span], final: bool) -> list[common_pb2.TokenLogprob]:
        """Entries for the raw text before ``released_to`` not reported yet. Until ``final`` a
        token reaching past it waits; at the end, whatever lies past it is dropped."""
        for span in spans:
            text = self.raw[span.start : span.end].lower()
            if text and text not in self._redacted:
                self._redacted.append(text)
        entries: list[common_pb2.TokenLogprob] = []
        while self._tokens:
            first = self._tokens[0]
            if first.start == first.end and self._bytes.is_special(first.token_id):
                self._tokens.pop(0)
                continue
            if first.start >= released_to:
                if final:
                    self._tokens.clear()
                break
            count, end, covered = self._group(spans)
            if end > released_to and not final:
                break
            group, self._tokens = self._tokens[:count], self._tokens[count:]
            entries.append(self._entry(group, min(end, released_to), covered))
        return entries

    def _group(self, spans: Sequence[Span]) -> tuple[int, int, list[Span]]:
        """How many leading tokens make one entry, where it ends, and the spans it covers."""
        start, count, end = self._tokens[0].start, 1, self._tokens[0].end
        while True:
            covered = [s for s in spans if s.start < max(end, start + 1) and s.end > start]
            need = max((s.end for s in covered), default=end)
            if need <= end or count == len(self._tokens):
                return count, end, covered
            while end < need and count < len(self._tokens):
                end = self._tokens[count].end
                count += 1

    def _entry(self, group: list[_Token], end: int, covered: list[Span]) -> common_pb2.TokenLogprob:
        start = group[0].start
        if not covered and len(group) == 1:
            token = group[0]
            text = self.raw[start:end]
            whole = end == token.end
            return common_pb2.TokenLogprob(
                token=text,
                bytes=self._bytes(token.token_id) if whole else text.encode(),
                logprob=token.logprob,
                top_logprobs=self._alternatives(token) if whole else [],
            )
        pieces, position = [], start
        for span in sorted(covered, key=lambda s: s.start):
            pieces += [self.raw[position : span.start], span.placeholder]
            position = span.end
        pieces.append(self.raw[position:end])
        text = "".join(pieces)
        return common_pb2.TokenLogprob(token=text, bytes=text.encode(), logprob=sum(t.logprob for t in group))

    def _alternatives(self, token: _Token) -> list[common_pb2.TokenAlternative]:
        kept = []
        for token_id, logprob in token.alternatives:
            text = self._bytes.text(token_id)
            if self._unsafe(text):
                continue
            kept.append(common_pb2.TokenAlternative(token=text, bytes=self._bytes(token_id), logprob=logprob))
        return kept

    def _unsafe(self, text: str) -> bool:
        if self._lexicon is not None and self._lexicon.find_evasive(text) is not None:
            return True
        probe = text.strip().lower()
        return len(probe) >= _MIN_LEAK_CHARS and any(probe in redacted for redacted in self._redacted)
