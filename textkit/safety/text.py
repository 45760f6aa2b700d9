"""Unicode normalisation of text, and the folded view of it that safety rules match against."""

from __future__ import annotations

import unicodedata

# Kept although they are control characters: they carry the layout of the text.
_KEPT_CONTROLS = frozenset("\n\t")


def is_invisible(char: str) -> bool:
    """Control characters other than newline and tab, and format characters (zero-width
    spaces and joiners, bidi overrides, soft hyphen, tag characters): they change nothing a
    reader sees, so they can hide a word from a matcher or smuggle text past a reader."""
    category = unicodedata.category(char)
    return (category == "Cc" and char not in _KEPT_CONTROLS) or category == "Cf"


def normalize(text: str) -> str:
    """NFKC (full-width and compatibility forms become their plain letters), then invisible
    characters dropped."""
    return "".join(char for char in unicodedata.normalize("NFKC", text) if not is_invisible(char))


def fold(text: str) -> tuple[str, list[int]]:
    """``text`` as rules compare it (NFKC, case-folded, invisible characters dropped), with
    the index in ``text`` of the character each folded character came from.

    Characters are folded one at a time so that a match in the folded text maps back to a span
    of ``text``, which a stream needs to know what it may release.
    """
    folded: list[str] = []
    offsets: list[int] = []
    for index, char in enumerate(text):
        if is_invisible(char):
            continue
        # One character can fold to several (the "ﬁ" ligature, "ß"), each mapping back to it.
        for part in unicodedata.normalize("NFKC", char).casefold():
            folded.append(part)
            offsets.append(index)
    return "".join(folded), offsets


def is_word_char(char: str) -> bool:
    """Whether ``char`` can continue a word of a space-separated language. Wide (CJK)
    characters cannot: those scripts put no space between words, so a Latin word next to
    them still stands on its own."""
    return (char.isalnum() or char == "_") and unicodedata.east_asian_width(char) not in ("W", "F")
