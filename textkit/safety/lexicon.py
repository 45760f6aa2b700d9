"""Blocked-word lexicons matched with Aho-Corasick over folded text (see ``text.fold``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import ahocorasick

from textkit.safety.deobfuscate import ALWAYS_DECODED, reading_views
from textkit.safety.evasion import EvasionMatcher
from textkit.safety.text import fold, is_word_char

log = logging.getLogger(__name__)

LEXICON_DIR = Path(__file__).resolve().parent / "lexicons"
DEFAULT_EN = [LEXICON_DIR / "en" / "default.txt"]
DEFAULT_ZH = [LEXICON_DIR / "zh" / "default.txt"]
# Phrases in which a term is harmless ("bomb shelter"): the allow-list policy.
DEFAULT_ALLOW = [LEXICON_DIR / "allow" / "default.txt"]


@dataclass(frozen=True)
class Entry:
    word: str  # folded
    rule: str  # "lexicon:<language>:<list name>"
    # Space-separated languages match whole words only ("ass" must not fire inside "class");
    # Chinese has no spaces between words, so its terms match anywhere.
    whole_word: bool


@dataclass(frozen=True)
class Match:
    rule: str
    word: str
    # The matched span of the searched text (not of its folded form).
    start: int
    end: int


def read_words(path: Path) -> list[str]:
    """One term a line; blank lines and lines starting with '#' are ignored."""
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


class Lexicon:
    def __init__(self, entries: Iterable[Entry], allowed: Iterable[str] = ()) -> None:
        entries = [entry for entry in entries if entry.word]
        self._automaton = ahocorasick.Automaton()
        for entry in entries:
            self._automaton.add_word(entry.word, entry)
        self.max_word_len = max((len(entry.word) for entry in entries), default=0)
        if self.max_word_len:
            self._automaton.make_automaton()
        # The input guard's matcher, through evasions (see ``textkit.safety.evasion``).
        self._evasive = EvasionMatcher(
            english=[(entry.word, entry) for entry in entries if entry.whole_word],
            chinese_terms=[(entry.word, entry) for entry in entries if not entry.whole_word],
            allowed=[fold(phrase)[0] for phrase in allowed],
        )

    def current(self) -> Lexicon:
        """Itself (a ``ReloadingLexicon`` answers its latest build): scanners take either."""
        return self

    def __len__(self) -> int:
        return len(self._automaton)

    @classmethod
    def from_words(cls, words: Iterable[str], rule: str, whole_word: bool) -> Lexicon:
        return cls(Entry(fold(word)[0], rule, whole_word) for word in words)

    @classmethod
    def from_files(cls, en: Sequence[Path] = (), zh: Sequence[Path] = (), allow: Sequence[Path] = ()) -> Lexicon:
        """English (whole-word) and Chinese (substring) lists, and allowed phrases; a list's
        rule is named after its language and file, e.g. ``lexicon:en:default``."""
        return cls(
            (
                Entry(fold(word)[0], f"lexicon:{language}:{path.stem}", whole_word)
                for language, paths, whole_word in (("en", en, True), ("zh", zh, False))
                for path in paths
                for word in read_words(path)
            ),
            allowed=[phrase for path in allow for phrase in read_words(path)],
        )

    def find(self, text: str, complete: bool = True, since: int = 0) -> Match | None:
        """The first blocked term in ``text`` that ends after index ``since``, if any.

        ``complete=False`` means more text may follow, so a whole-word term that ends exactly at
        the end of ``text`` is not a match yet: the next character may continue the word.
        ``since`` skips terms within text already judged, which may be there only as the left
        context of the new text.
        """
        if not self.max_word_len:
            return None
        return self._find_folded(*fold(text), complete, since)

    def _find_folded(self, folded: str, offsets: list[int], complete: bool, since: int) -> Match | None:
        for last, entry in self._automaton.iter(folded):
            first = last - len(entry.word) + 1
            end = offsets[last] + 1
            if end > since and (not entry.whole_word or _is_whole_word(folded, first, last, complete)):
                return Match(entry.rule, entry.word, offsets[first], end)
        return None

    def find_evasive(self, text: str) -> Match | None:
        """The first term in what ``text`` reads as, through evasions: look-alike letters,
        fillers, markup, accents, leetspeak, spelled-out letters, encodings, Traditional
        characters and pinyin (see ``textkit.safety.evasion``). The span is in the view of
        the text where the term was found, which may be a decoding of it."""
        return self.find_in_views(reading_views(text))

    def find_in_views(self, views: Iterable[tuple[str, str]]) -> Match | None:
        """Like ``find_evasive`` over readings already made (``deobfuscate.reading_views``)."""
        for name, view in views:
            found = self._evasive.find(view, deep=name not in ALWAYS_DECODED)
            if found is not None:
                return Match(found.entry.rule, found.entry.word, found.start, found.end)
        return None

    def unsafe_suffix_start(self, text: str) -> int:
        """Where the longest suffix of ``text`` that could still grow into a blocked term
        starts (``len(text)`` when there is none): text before it is safe to release whatever
        follows. A suffix that already is a whole term counts, as a whole word still needs
        the character after it to tell."""
        folded, offsets = fold(text)
        for length in range(min(self.max_word_len, len(folded)), 0, -1):
            # Automaton.match: is this a prefix of some term?
            if self._automaton.match(folded[-length:]):
                return offsets[len(folded) - length]
        return len(text)


def _is_whole_word(folded: str, first: int, last: int, complete: bool) -> bool:
    if first > 0 and is_word_char(folded[first - 1]):
        return False
    if last + 1 == len(folded):
        return complete  # else the next character, still to come, decides
    return not is_word_char(folded[last + 1])


class ReloadingLexicon:
    """A lexicon built from files that is rebuilt when one of them changes, checked at most
    every ``check_every_s``: operators edit the lists without restarting the service."""

    def __init__(
        self, en: Sequence[Path] = (), zh: Sequence[Path] = (), allow: Sequence[Path] = (), check_every_s: float = 2.0
    ) -> None:
        self._en, self._zh, self._allow = list(en), list(zh), list(allow)
        self._check_every_s = check_every_s
        self._stamps = self._read_stamps()
        self._checked = time.monotonic()
        self._lexicon = Lexicon.from_files(en=self._en, zh=self._zh, allow=self._allow)

    def _read_stamps(self) -> list[float]:
        return [path.stat().st_mtime_ns if path.exists() else -1 for path in (*self._en, *self._zh, *self._allow)]

    def current(self) -> Lexicon:
        now = time.monotonic()
        if now - self._checked >= self._check_every_s:
            self._checked = now
            stamps = self._read_stamps()
            if stamps != self._stamps:
                try:
                    self._lexicon = Lexicon.from_files(en=self._en, zh=self._zh, allow=self._allow)
                except OSError:
                    # A list being replaced may be missing for a moment: keep the old lexicon.
                    log.warning("lexicon reload failed; keeping the previous one", exc_info=True)
                else:
                    self._stamps = stamps
                    log.info("lexicon reloaded", extra={"terms": len(self._lexicon)})
        return self._lexicon
