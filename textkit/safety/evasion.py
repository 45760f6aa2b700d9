"""Lexicon terms found in the reading of a text (``deobfuscate.clean``) however they are
spelled: English on word boundaries after leetspeak is undone and spelled-out letters are
joined; Chinese in Simplified characters and in pinyin.

English: the reading is split into words; a word that mixes letters with digits or symbols
is read as leetspeak ("b0mb"), unless it is a quantity ("80mb") or hexadecimal. A term
matches a run of words when each of its words is one word of the text or is spelled out one
letter at a time ("b o m b", "b.o.m.b"), never when a word of the text has to be cut or
glued to a neighbour: "the forbidden word in Taboo" does not read as "forbiddenword". A long
term (7 letters or more) also matches inside a longer word ("xxforbiddenwordxx").

Chinese: Han characters with what was slipped between them dropped (``chinese.squeeze``),
then pinyin: a term matches a run of characters and Latin syllables with its reading
(homophones, "du pin jiao yi", "dú pǐn", "du2pin3", "毒pin交易"), or its initials, alone
("dpjy") or mixed with characters ("dp交易").

An allow list names phrases in which a term is harmless ("bomb shelter" for a term "bomb");
a term found inside an occurrence of one is not a match.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import ahocorasick

from textkit.safety import chinese

_TOKEN = re.compile(r"[a-z0-9@$]+(?:[!|+]+[a-z0-9@$]+)*")
# Leetspeak, and the letters that look alike folded together (so 1, l, i, ! and | are one).
_LEET = str.maketrans(
    {
        "0": "o",
        "1": "i",
        "l": "i",
        "!": "i",
        "|": "i",
        "3": "e",
        "4": "a",
        "@": "a",
        "5": "s",
        "$": "s",
        "7": "t",
        "+": "t",
        "8": "b",
        "9": "g",
        "2": "z",
        "6": "g",
    }
)
_MULTI_LEET = (
    ("|\\/|", "m"),
    ("/\\/\\", "m"),
    ("|\\|", "n"),
    ("/\\/", "n"),
    ("\\/\\/", "w"),
    ("|3", "b"),
    ("()", "o"),
    ("/\\", "a"),
    ("\\/", "v"),
    ("|<", "k"),
    ("|-|", "h"),
    ("[)", "d"),
    ("|)", "d"),
)
_MULTI_LEET_PATTERN = re.compile("|".join(re.escape(sequence) for sequence, _ in _MULTI_LEET))
_MULTI_LEET_MAP = dict(_MULTI_LEET)
# A number with a unit is a quantity, not leetspeak ("80mb", "5kg", "2nd", "1080p").
_QUANTITY = re.compile(
    r"\d+(?:[.,]\d+)*(?:k|m|g|t|p|mi|ki|gi)?(?:b|bit|bits|bps|hz|s|ms|us|ns|px|pt|em|rem|x|st|nd|rd|th|am|pm|kg|km|cm|mm|m|g|l|ml|mb|gb|kb|tb|d|h|min|v|w|a|k|p|fps|gib|mib|kib|c|f)?"
)
_HEX = re.compile(r"(?:0x)?[0-9a-f]{6,}")
_INFIX_MIN_LETTERS = 7


class _Rough(dict):
    """``str.translate`` table for a quick test: every separator dropped and every leet
    character read as a letter. A term found by ``_Words`` is always found here too."""

    def __missing__(self, code: int) -> str | None:
        char = chr(code)
        value = char.translate(_LEET) if char.isascii() and (char.isalnum() or char in "@$!|+") else None
        self[code] = value
        return value


_ROUGH = _Rough()


def _leet(token: str) -> str:
    if token.isalpha():
        return token.translate(_LEET)  # still folds l/i
    if not any(char.isalpha() for char in token) or _QUANTITY.fullmatch(token) or _HEX.fullmatch(token):
        return token
    return token.translate(_LEET)


def _compact(word: str) -> str:
    return "".join(_leet(token) for token in _TOKEN.findall(word))


# What a term stands for (the lexicon's entry); handed back as is with each find.
EntryT = TypeVar("EntryT")


@dataclass(frozen=True)
class Found(Generic[EntryT]):
    entry: EntryT
    start: int  # in the reading that was searched
    end: int


@dataclass(frozen=True)
class _English(Generic[EntryT]):
    entry: EntryT
    letters: int
    # Offsets inside the compact term where one of its words ends and the next begins.
    bounds: frozenset[int]


class _Words:
    """The words of a reading: their compact form glued together, and where each begins."""

    def __init__(self, reading: str) -> None:
        if _MULTI_LEET_PATTERN.search(reading):
            reading = _MULTI_LEET_PATTERN.sub(lambda m: _MULTI_LEET_MAP[m.group()], reading)
        starts, ends, spans, parts = [], [], [], []
        position = 0
        tokens = list(_TOKEN.finditer(reading))
        for index, token in enumerate(tokens):
            part = _leet(token.group())
            if len(part) == 1 and not part.isalpha() and _spelled_out(tokens, index):
                part = part.translate(_LEET)  # "f_0_r_b_1_d": a digit spelling a letter
            starts.append(position)
            position += len(part)
            ends.append(position)
            spans.append(token.span())
            parts.append(part)
        self.text = "".join(parts)
        self.starts, self.ends, self.spans = starts, ends, spans
        self._start_index = {offset: index for index, offset in enumerate(starts)}
        self._end_index = {offset: index for index, offset in enumerate(ends)}

    def accepts(self, first: int, last: int, term: _English) -> bool:
        """Whether compact[first:last + 1] is a term made of whole or spelled-out words."""
        start, end = self._start_index.get(first), self._end_index.get(last + 1)
        if start is None or end is None:
            return self._inside_one_word(first, last, term)
        for index in range(start, end + 1):
            word_start, word_end = self.starts[index] - first, self.ends[index] - first
            if word_end - word_start > 1 and not (
                (word_start == 0 or word_start in term.bounds) and (word_end == term.letters or word_end in term.bounds)
            ):
                return False
        return True

    def _inside_one_word(self, first: int, last: int, term: _English) -> bool:
        if term.letters < _INFIX_MIN_LETTERS:
            return False
        index = _find_word(self.starts, first)
        return index is not None and self.ends[index] > last

    def span(self, first: int, last: int) -> tuple[int, int]:
        start_word = _find_word(self.starts, first)
        end_word = _find_word(self.starts, last)
        if start_word is None or end_word is None:
            raise ValueError(f"offsets {first}..{last} start before the reading's first word")
        return self.spans[start_word][0], self.spans[end_word][1]


def _spelled_out(tokens: list[re.Match[str]], index: int) -> bool:
    neighbours = tokens[max(index - 1, 0) : index] + tokens[index + 1 : index + 2]
    return any(len(token.group()) == 1 and token.group().isalpha() for token in neighbours)


def _find_word(starts: Sequence[int], offset: int) -> int | None:
    index = bisect.bisect_right(starts, offset) - 1
    return index if index >= 0 else None


@dataclass(frozen=True)
class _Chinese(Generic[EntryT]):
    entry: EntryT
    text: str  # Simplified
    syllables: tuple[str, ...]


class EvasionMatcher(Generic[EntryT]):
    """Terms (English whole-word ones and Chinese ones) and allowed phrases, read through
    evasions; see the module's doc."""

    def __init__(
        self,
        english: Iterable[tuple[str, EntryT]],
        chinese_terms: Iterable[tuple[str, EntryT]],
        allowed: Iterable[str] = (),
    ) -> None:
        self._english = ahocorasick.Automaton()
        for term, entry in english:
            words = [_compact(word) for word in term.split()]
            words = [word for word in words if word]
            compact = "".join(words)
            if not compact:
                continue
            bounds, offset = set(), 0
            for word in words[:-1]:
                offset += len(word)
                bounds.add(offset)
            self._english.add_word(compact, _English(entry, len(compact), frozenset(bounds)))
        self._han = ahocorasick.Automaton()
        self._initials = ahocorasick.Automaton()
        latin: list[tuple[str, _Chinese[EntryT]]] = []
        for term, entry in chinese_terms:
            simplified = chinese.to_simplified(term)
            syllables = tuple(chinese.term_syllables(simplified))
            self._han.add_word(simplified, _Chinese(entry, simplified, syllables))
            if len(syllables) >= 2 and all(syllables):
                found = _Chinese(entry, simplified, syllables)
                initials = "".join(s[0] for s in syllables)
                self._initials.add_word(initials, found)
                spelled = r"[\W\d_]*".join(rf"{re.escape(s)}[1-5]?" for s in syllables)
                latin.append((spelled + (f"|{initials}" if len(initials) >= 3 else ""), found))
        # Pinyin (or initials) in Latin letters alone: one pass of one regex finds whether any
        # term is there; only then is each term's own pattern tried.
        self._latin_any = re.compile(rf"(?<![a-z])(?:{'|'.join(p for p, _ in latin)})(?![a-z])") if latin else None
        self._latin = [(re.compile(rf"(?<![a-z])(?:{p})(?![a-z])"), term) for p, term in latin]
        for automaton in (self._english, self._han, self._initials):
            if len(automaton):
                automaton.make_automaton()
        self._allowed_english = [_compact(phrase) for phrase in allowed if _compact(phrase)]
        self._allowed_han = [chinese.squeeze(chinese.to_simplified(p)) for p in allowed if any(map(chinese.is_han, p))]

    def find(self, reading: str, deep: bool = True) -> Found[EntryT] | None:
        """The first term in ``reading``; ``deep=False`` leaves out pinyin homophones and
        mixed forms (for views such as rot13 that every text has)."""
        return self._find_english(reading) or self._find_chinese(reading, deep)

    def _find_english(self, reading: str) -> Found[EntryT] | None:
        if not len(self._english):
            return None
        if (
            not _MULTI_LEET_PATTERN.search(reading)
            and next(self._english.iter(reading.translate(_ROUGH)), None) is None
        ):
            return None
        words = _Words(reading)
        allowed = _occurrences(words.text, self._allowed_english)
        for last, term in self._english.iter(words.text):
            first = last - term.letters + 1
            if words.accepts(first, last, term) and not _overlaps(allowed, first, last + 1):
                return Found(term.entry, *words.span(first, last))
        return None

    def _find_chinese(self, reading: str, deep: bool) -> Found[EntryT] | None:
        if chinese.HAN.search(reading) is None:
            return self._find_latin_pinyin(reading)
        simplified = chinese.to_simplified(reading)
        squeezed = chinese.squeeze(simplified)
        allowed = _occurrences(squeezed, self._allowed_han)
        if len(self._han):
            for last, term in self._han.iter(squeezed):
                if not _overlaps(allowed, last - len(term.text) + 1, last + 1):
                    return Found(term.entry, 0, len(reading))
        if deep and len(self._initials):
            found = self._find_homophones(squeezed, allowed) or self._find_mixed(simplified)
            if found is not None:
                return Found(found.entry, 0, len(reading))
        return self._find_latin_pinyin(reading)

    def _find_homophones(self, squeezed: str, allowed: list[tuple[int, int]]) -> _Chinese[EntryT] | None:
        for last, term in self._initials.iter(chinese.initials(squeezed)):
            first = last - len(term.syllables) + 1
            window = squeezed[first : last + 1]
            if tuple(map(chinese.syllable, window)) == term.syllables and not _overlaps(allowed, first, last + 1):
                return term
        return None

    def _find_mixed(self, simplified: str) -> _Chinese[EntryT] | None:
        """Pinyin or initials next to characters ("毒pin交易", "dp交易"), around each place
        where Latin letters touch a Han character."""
        covered = -1
        for mixed in chinese.MIXED.finditer(simplified):
            if mixed.start() < covered:
                continue
            start, covered = max(0, mixed.start() - 12), mixed.end() + 24
            found = self._find_units(chinese.units(simplified[start:covered]))
            if found is not None:
                return found
        return None

    def _find_latin_pinyin(self, reading: str) -> Found[EntryT] | None:
        if self._latin_any is None or self._latin_any.search(reading) is None:
            return None
        for pattern, term in self._latin:
            match = pattern.search(reading)
            if match is not None:
                return Found(term.entry, *match.span())
        return None

    def _find_units(self, units: list[chinese.Unit]) -> _Chinese[EntryT] | None:
        initials = "".join(unit.initial or "|" for unit in units)
        for last, term in self._initials.iter(initials):
            window = units[last - len(term.syllables) + 1 : last + 1]
            if _reads_as(window, term.syllables, units, last):
                return term
        return None


def _reads_as(window: list[chinese.Unit], syllables: tuple[str, ...], units: list[chinese.Unit], last: int) -> bool:
    for unit, expected in zip(window, syllables, strict=True):
        if unit.syllable:
            if unit.syllable != expected:
                return False
        elif unit.initial != expected[0]:
            return False
    if all(not unit.han and not unit.syllable for unit in window):
        # Initials alone: they must be a word of their own, nothing more, nothing less.
        word = window[0].word
        first = last - len(window) + 1
        before = units[first - 1].word if first > 0 else None
        after = units[last + 1].word if last + 1 < len(units) else None
        return len(window) >= 3 and all(unit.word == word for unit in window) and word not in (before, after)
    return True


def _occurrences(text: str, phrases: Sequence[str]) -> list[tuple[int, int]]:
    spans = []
    for phrase in phrases:
        start = text.find(phrase)
        while start != -1:
            spans.append((start, start + len(phrase)))
            start = text.find(phrase, start + 1)
    return spans


def _overlaps(spans: list[tuple[int, int]], start: int, end: int) -> bool:
    """Whether [start, end) overlaps one of ``spans``: "build a bomb shelter" is about a shelter."""
    return any(start < b and a < end for a, b in spans)
