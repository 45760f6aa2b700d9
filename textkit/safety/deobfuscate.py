"""What a reader sees, as plain letters: the view of a text the input guard matches against.

Attackers hide a term from a matcher in ways a human reader (or a model) sees through:
look-alike letters from other scripts (UTS #39 confusables), small capitals and other styled
letters, combining accents, filler and zero-width characters, HTML tags and entities between
the letters, and a right-to-left override that shows reversed text in reading order. ``clean``
undoes all of these. ``decodings`` finds payloads hidden in an encoding (base64, split or
whole, hex, URL escapes, rot13, reversal, Morse, binary, ``\\u`` escapes) and returns what they
say, to be cleaned and matched like the text itself.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import html
import re
import unicodedata
import urllib.parse
from functools import cache

from confusable_homoglyphs import confusables

from textkit.safety.text import is_invisible

# Characters that render as blank space but are letters or symbols to Unicode, so NFKC keeps
# them: Hangul fillers, the braille blank, the Mongolian vowel separator, the Khmer inherent
# vowels, the combining grapheme joiner.
FILLERS = frozenset("\u115f\u1160\u3164\uffa0\u2800\u180e\u17b4\u17b5\u034f")
# Names of styled Latin letters: small capitals, modifier, circled, squared, regional
# indicator, mathematical and "letter with stroke" forms name their plain letter.
_LETTER_NAME = re.compile(
    r"^(?:LATIN (?:SMALL |CAPITAL )?LETTER (?:SMALL CAPITAL |TURNED |REVERSED |SCRIPT |DOTLESS )?"
    r"|MODIFIER LETTER (?:SMALL |CAPITAL )(?:SMALL CAPITAL )?|(?:NEGATIVE )?(?:CIRCLED|SQUARED) LATIN (?:SMALL |CAPITAL )?LETTER "
    r"|REGIONAL INDICATOR SYMBOL LETTER |MATHEMATICAL [A-Z\- ]*?(?:SMALL|CAPITAL) )"
    r"([A-Z])(?: WITH .*)?$"
)


def _is_wide(char: str) -> bool:
    return unicodedata.east_asian_width(char) in ("W", "F")


@cache
def _confusable_prototypes() -> dict[str, str]:
    """Each non-ASCII character that UTS #39 lists as confusable with an ASCII letter or digit,
    mapped to that letter (lower case): the skeleton's single-character part."""
    table: dict[str, str] = {}
    for char, glyphs in confusables.confusables_data.items():
        if len(char) != 1 or char.isascii() or _is_wide(char):
            continue
        ascii_glyphs = sorted(
            {g["c"].lower() for g in glyphs if len(g["c"]) == 1 and g["c"].isascii() and g["c"].isalnum()}
        )
        letters = [glyph for glyph in ascii_glyphs if glyph.isalpha()]
        if letters or ascii_glyphs:
            table[char] = (letters or ascii_glyphs)[0]
    return table


class _Reading(dict):
    """``str.translate`` table built on first sight of each character: what it reads as."""

    def __missing__(self, code: int) -> str | None:
        value = _read_char(chr(code))
        self[code] = value
        return value


def _read_char(char: str) -> str | None:
    if is_invisible(char) or char in FILLERS:
        return None
    category = unicodedata.category(char)
    if category in ("Mn", "Me"):
        return None  # combining accents, enclosing marks
    if char.isascii():
        return char.lower()
    if _is_wide(char):
        return char  # CJK is read as it is (Traditional forms are handled by the Chinese matcher)
    name = unicodedata.name(char, "")
    styled = _LETTER_NAME.match(name)
    if styled is not None:
        return styled.group(1).lower()
    decomposed = unicodedata.normalize("NFKD", char)
    base = "".join(part for part in decomposed if not unicodedata.combining(part))
    if base != char and base:
        return "".join(_read_char(part) or "" for part in base)
    folded = char.casefold()
    if folded != char and len(folded) > 1:
        return folded
    return _confusable_prototypes().get(char, _confusable_prototypes().get(folded, folded))


_READING = _Reading()

# Tags are dropped; a block-level tag separates words as a line break would.
_HTML_COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.DOTALL)
_HTML_TAG = re.compile(r"</?([a-zA-Z][a-zA-Z0-9-]*)\b[^<>]{0,300}>")
_BLOCK_TAGS = frozenset(
    [
        "br",
        "p",
        "div",
        "li",
        "ul",
        "ol",
        "tr",
        "td",
        "th",
        "table",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "hr",
        "section",
        "article",
        "header",
        "footer",
        "blockquote",
        "pre",
    ]
)
_RLO, _LRO, _PDF = "\u202e", "\u202d", "\u202c"


def strip_html(text: str) -> str:
    if "<" in text:
        text = _HTML_COMMENT.sub("", text)
        text = _HTML_TAG.sub(lambda tag: " " if tag.group(1).lower() in _BLOCK_TAGS else "", text)
    if "&" in text:
        text = html.unescape(text)
    return text


def apply_overrides(text: str) -> str:
    """Text after a right-to-left override (up to its pop or the end of the line) is shown
    reversed: put it in the order a reader sees."""
    if _RLO not in text:
        return text
    out, index = [], 0
    while (start := text.find(_RLO, index)) != -1:
        out.append(text[index:start])
        end = min((pos for pos in (text.find(_PDF, start), text.find("\n", start)) if pos != -1), default=len(text))
        out.append(text[start + 1 : end].replace(_LRO, "")[::-1])
        index = end + 1 if end < len(text) and text[end] == _PDF else end
    out.append(text[index:])
    return "".join(out)


def clean(text: str) -> str:
    """The text as a reader takes it, in plain lower-case letters (see the module's doc)."""
    text = strip_html(apply_overrides(text))
    return unicodedata.normalize("NFKC", text).translate(_READING)


# -- hidden payloads -----------------------------------------------------------------------

_BASE64_RUN = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{12,}={0,2}(?![A-Za-z0-9+/=])")
# Pieces of one base64 payload cut apart by spaces, quotes, plus signs or line breaks.
_BASE64_SPLIT = re.compile(r"(?<![A-Za-z0-9+/])(?:[A-Za-z0-9+/]{4,}+={0,2}[\s\"'+,]{1,4}){2,}[A-Za-z0-9+/]{2,}+={0,2}")
_HEX_RUN = re.compile(r"(?<![0-9a-fA-F])(?:[0-9a-fA-F]{2}){8,}(?![0-9a-fA-F])")
_HEX_SPACED = re.compile(r"(?:(?:0x|\\x)?[0-9a-fA-F]{2}[\s,:]?){8,}")
_URL_ESCAPE = re.compile(r"%[0-9a-fA-F]{2}")
_UNICODE_ESCAPE = re.compile(r"\\u[0-9a-fA-F]{4}|\\x[0-9a-fA-F]{2}|&#x?[0-9a-fA-F]+;")
_MORSE = re.compile(r"(?:[.\-·•_−–]{1,7}[ /|]+){5,}[.\-·•_−–]{1,7}")
_BINARY = re.compile(r"(?:[01]{8}\s?){4,}")
_WORD = re.compile(r"[^\W_]+")
MORSE = {
    ".-": "a",
    "-...": "b",
    "-.-.": "c",
    "-..": "d",
    ".": "e",
    "..-.": "f",
    "--.": "g",
    "....": "h",
    "..": "i",
    ".---": "j",
    "-.-": "k",
    ".-..": "l",
    "--": "m",
    "-.": "n",
    "---": "o",
    ".--.": "p",
    "--.-": "q",
    ".-.": "r",
    "...": "s",
    "-": "t",
    "..-": "u",
    "...-": "v",
    ".--": "w",
    "-..-": "x",
    "-.--": "y",
    "--..": "z",
    "-----": "0",
    ".----": "1",
    "..---": "2",
    "...--": "3",
    "....-": "4",
    ".....": "5",
    "-....": "6",
    "--...": "7",
    "---..": "8",
    "----.": "9",
}


def _readable(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if len(text) < 4:
        return None
    printable = sum(char.isprintable() or char.isspace() for char in text) / len(text)
    letters = sum(char.isalpha() for char in text) / len(text)
    return text if printable > 0.95 and letters > 0.4 else None


def _base64(blob: str) -> str | None:
    compact = re.sub(r"[\s\"'+,]", "", blob) if not blob.isalnum() else blob
    for candidate in (compact, compact.replace("-", "+").replace("_", "/")):
        try:
            data = base64.b64decode(candidate + "=" * (-len(candidate) % 4), validate=True)
        except (binascii.Error, ValueError):
            continue
        text = _readable(data)
        if text is not None:
            return text
    return None


def _hex(blob: str) -> str | None:
    digits = re.sub(r"0x|\\x|[\s,:]", "", blob)
    if len(digits) % 2:
        return None
    try:
        return _readable(bytes.fromhex(digits))
    except ValueError:
        return None


def _morse(blob: str) -> str:
    blob = blob.translate(str.maketrans("·•_−–", "..---"))
    words = re.split(r"\s*[/|]\s*|\s{3,}", blob.strip())
    return " ".join("".join(MORSE.get(letter, "") for letter in word.split()) for word in words)


def _binary(blob: str) -> str | None:
    bits = re.sub(r"\s", "", blob)
    return _readable(bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits) - 7, 8)))


def decodings(text: str, max_decoded: int = 8, always: bool = True) -> list[tuple[str, str]]:
    """``(encoding, decoded text)`` for each likely payload in ``text``; with ``always``, rot13
    and reversal (of the whole text and of each word) too, since any text can be one."""
    found: list[tuple[str, str]] = []

    def add(name: str, decoded: str | None) -> None:
        if decoded and len(found) < max_decoded and all(decoded != seen for _, seen in found):
            found.append((name, decoded))

    for blob in _BASE64_RUN.findall(text):
        add("base64", _base64(blob))
    for blob in _BASE64_SPLIT.findall(text):
        # The run may begin with ordinary words before the payload: try later starts too.
        pieces = re.split(r"[\s\"'+,]+", blob)
        for start in range(min(len(pieces) - 1, 6)):
            decoded = _base64("".join(pieces[start:]))
            if decoded is not None:
                add("base64-split", decoded)
                break
    for blob in _HEX_RUN.findall(text):
        add("hex", _hex(blob))
    if "0x" in text or "\\x" in text or " " in text:
        for blob in _HEX_SPACED.findall(text):
            if not _HEX_RUN.fullmatch(blob.strip()):
                add("hex", _hex(blob))
    if _URL_ESCAPE.search(text):
        add("url", urllib.parse.unquote_plus(text))
    if _UNICODE_ESCAPE.search(text):
        add("escapes", html.unescape(_UNICODE_ESCAPE.sub(_unescape, text)))
    for blob in _MORSE.findall(text):
        add("morse", _morse(blob))
    for blob in _BINARY.findall(text):
        add("binary", _binary(blob))
    if always:
        found.extend(always_decoded(text))
    return found


def always_decoded(text: str) -> list[tuple[str, str]]:
    return [
        ("rot13", codecs.encode(text, "rot13")),
        ("reversed", text[::-1]),
        ("reversed-words", _WORD.sub(lambda word: word.group()[::-1], text)),
    ]


def _unescape(escape: re.Match[str]) -> str:
    value = escape.group()
    if value.startswith("&"):
        return value
    return chr(int(value[2:], 16))


# Decodings that any text has, so they are searched for the plainest evasions only.
ALWAYS_DECODED = frozenset({"rot13", "reversed", "reversed-words"})


def reading_views(text: str, plain: str | None = None) -> list[tuple[str, str]]:
    """``("plain", what text reads as)``, then ``(encoding, what a payload hidden in it reads as)``;
    ``plain`` is ``clean(text)`` when the caller has it already."""
    plain = clean(text) if plain is None else plain
    payloads = [(name, clean(decoded)) for name, decoded in decodings(text, always=False)]
    # Reading and rot13 or reversal commute: derive those from the reading, already made.
    return [("plain", plain), *payloads, *always_decoded(plain)]
