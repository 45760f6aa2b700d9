"""Chinese text as the lexicon reads it: Simplified characters (OpenCC), and pinyin syllables
(pypinyin's dictionary) so that a term written in pinyin, with or without tones, as its
initials, with homophones, or mixing pinyin and characters, still reads as the term."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import cache

import opencc
from pypinyin import Style, lazy_pinyin
from pypinyin.pinyin_dict import pinyin_dict


@cache
def _converter() -> opencc.OpenCC:
    return opencc.OpenCC("t2s")


def to_simplified(text: str) -> str:
    return _converter().convert(text)


HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def is_han(char: str) -> bool:
    return "\u4e00" <= char <= "\u9fff" or "\u3400" <= char <= "\u4dbf" or "\uf900" <= char <= "\ufaff"


def _toneless(reading: str) -> str:
    plain = "".join(c for c in unicodedata.normalize("NFD", reading) if not unicodedata.combining(c))
    # ü is written v where no diacritics are at hand; NFD has already made it a plain u.
    return plain.replace("ü", "v").lower()


@cache
def syllable(char: str) -> str:
    """The most common reading of a character, without tone; "" for a character without one."""
    readings = pinyin_dict.get(ord(char))
    return _toneless(readings.split(",")[0]) if readings else ""


@cache
def syllables() -> frozenset[str]:
    """Every toneless syllable of Mandarin that the dictionary uses."""
    return frozenset(_toneless(r) for readings in pinyin_dict.values() for r in readings.split(","))


def term_syllables(term: str) -> list[str]:
    """The term's reading, in context (pypinyin's phrase dictionary picks the right one of a
    character's several readings)."""
    return [_toneless(part) for part in lazy_pinyin(term, style=Style.TONE)]


_LONGEST_SYLLABLE = 6


@cache
def segment(word: str) -> list[str] | None:
    """``word`` (Latin letters, optional tone digits 1-5 after each syllable) as pinyin syllables,
    the fewest that cover it; None if it is not pinyin."""
    word = word.lower()
    valid = syllables()
    # best[i]: the shortest segmentation of word[:i]
    best: list[list[str] | None] = [None] * (len(word) + 1)
    best[0] = []
    for end in range(1, len(word) + 1):
        for start in range(max(0, end - _LONGEST_SYLLABLE - 1), end):
            prefix = best[start]
            if prefix is None:
                continue
            piece = word[start:end]
            if piece[-1] in "12345" and len(piece) > 1:
                piece = piece[:-1]
            current = best[end]
            if piece in valid and (current is None or len(prefix) + 1 < len(current)):
                best[end] = [*prefix, piece]
    return best[-1]


@dataclass(frozen=True)
class Unit:
    """One position of the pinyin view: a Han character, a pinyin syllable written in Latin
    letters, or a lone Latin letter that may be a syllable's initial."""

    syllable: str  # "" for a lone letter
    initial: str
    han: bool
    # Which Latin word a unit came from (-1 for a character): initials must make a word alone.
    word: int = -1


BREAK = Unit("", "|", False)
_LATIN_RUN = re.compile(r"[a-z]+[1-5]?(?:[a-z]+[1-5]?)*")


def units(text: str) -> list[Unit]:
    """``text`` (already cleaned, Simplified) as pinyin units. Punctuation that ends a clause
    and words that are not pinyin break the sequence; other separators, digits and symbols
    between units are skipped."""
    out: list[Unit] = []
    index = words = 0
    while index < len(text):
        char = text[index]
        if is_han(char):
            reading = syllable(char)
            out.append(Unit(reading, reading[:1], True) if reading else BREAK)
            index += 1
            continue
        if "a" <= char <= "z":
            run = _LATIN_RUN.match(text, index)
            assert run is not None, "a run of Latin letters starts at any a-z"
            word = run.group()
            index = run.end()
            words += 1
            parts = segment(word)
            if parts is not None:
                out.extend(Unit(part, part[0], False, words) for part in parts)
            elif len(word) <= 6:
                # Initials ("dpjy"), or letters slipped between characters.
                out.extend(Unit("", letter, False, words) for letter in word if not letter.isdigit())
            else:
                out.append(BREAK)
            continue
        if char in "。，、；：！？,;:!?\n|" or char.isalpha():
            out.append(BREAK)
        index += 1
    return out


_CLAUSE_BREAK = re.compile(r"[a-z]{4,}|[。，、；：！？,;:!?|]+")
_NOT_HAN = re.compile(r"[^\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff|]+")


def squeeze(text: str) -> str:
    """The Han characters of ``text`` with what was slipped between them dropped (spaces,
    symbols, digits, up to three Latin letters); clause punctuation and longer words stay as
    a break ("|"), so "严禁毒品。交易大厅" does not read as one phrase."""
    return _NOT_HAN.sub("", _CLAUSE_BREAK.sub("|", text))


class _Initials(dict):
    """``str.translate`` table: a Han character to the initial of its reading."""

    def __missing__(self, code: int) -> str:
        value = syllable(chr(code))[:1] or "|"
        self[code] = value
        return value


_INITIALS = _Initials()


def initials(squeezed: str) -> str:
    """One letter per character of a squeezed text (``squeeze``): its reading's initial."""
    return squeezed.translate(_INITIALS)


# Latin letters touching a Han character: where pinyin may be mixed with characters.
MIXED = re.compile(
    r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff][^\w\n]?[a-z]|[a-z][^\w\n]?[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"
)
