"""PII detection: a permissive pattern finds candidates, a validator (checksum, range, entropy)
decides. Patterns alone would flag order numbers as cards and version strings as addresses."""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from itertools import pairwise

EMAIL = "email"
PHONE = "phone"
CARD = "card"
IBAN = "iban"
CN_ID = "cn_id"
IPV4 = "ipv4"
IPV6 = "ipv6"
SECRET = "secret"
KINDS = (EMAIL, PHONE, CARD, IBAN, CN_ID, IPV4, IPV6, SECRET)


@dataclass(frozen=True)
class PiiMatch:
    kind: str
    start: int
    end: int


def digits(text: str) -> str:
    return "".join(char for char in text if char.isdigit())


def luhn_valid(number: str) -> bool:
    """Payment card check digit (ISO/IEC 7812)."""
    total = 0
    for index, char in enumerate(reversed(number)):
        value = int(char)
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def card_valid(candidate: str) -> bool:
    number = digits(candidate)
    # All-same digits pass Luhn for some lengths but are never issued.
    # No issuer number starts with 0 ("0086 138 ..." is a phone number that may pass Luhn).
    return 13 <= len(number) <= 19 and number[0] != "0" and len(set(number)) > 1 and luhn_valid(number)


# ISO 13616 lengths of the countries most seen; others are accepted on the checksum alone.
_IBAN_LENGTHS = {
    "AD": 24,
    "AT": 20,
    "BE": 16,
    "CH": 21,
    "CZ": 24,
    "DE": 22,
    "DK": 18,
    "ES": 24,
    "FI": 18,
    "FR": 27,
    "GB": 22,
    "IE": 22,
    "IT": 27,
    "LU": 20,
    "NL": 18,
    "NO": 15,
    "PL": 28,
    "PT": 25,
    "SE": 24,
}


def iban_valid(candidate: str) -> bool:
    """ISO 13616 mod-97: the country and check digits moved to the end, letters as 10..35."""
    iban = candidate.replace(" ", "").upper()
    expected = _IBAN_LENGTHS.get(iban[:2])
    if not 15 <= len(iban) <= 34 or (expected is not None and len(iban) != expected):
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


_CN_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CN_ID_CHECK = "10X98765432"


def cn_id_valid(candidate: str) -> bool:
    """GB 11643-1999: a region code, a real birth date and the ISO 7064 MOD 11-2 check character."""
    number = candidate.upper()
    if len(number) != 18 or not number[:17].isdigit() or number[0] == "0":
        return False
    try:
        born = date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    if not 1900 <= born.year <= date.today().year:
        return False
    check = sum(int(char) * weight for char, weight in zip(number, _CN_ID_WEIGHTS, strict=False)) % 11
    return _CN_ID_CHECK[check] == number[17]


def phone_valid(candidate: str) -> bool:
    number = digits(candidate)
    international = candidate.lstrip().lstrip("(").startswith("+") or candidate.lstrip().startswith("00")
    if international:
        number = number[2:] if candidate.lstrip().startswith("00") else number
        # E.164: at most 15 digits with the country code; 86 must be followed by a mainland number.
        if number.startswith("86"):
            return _cn_mobile(number[2:])
        return 8 <= len(number) <= 15
    if number.startswith("86") and len(number) == 13:
        return _cn_mobile(number[2:])
    return _cn_mobile(number)


# Regions whose national formats (with their trunk prefix 0, or North America's (NXX) NXX-XXXX)
# are recognised without a country code; phonenumbers (Google's libphonenumber metadata)
# decides whether a number is one that region can have.
_DATE = re.compile(r"\d{1,2}[-./]\d{1,2}[-./]\d{2,4}|\d{4}[-./]\d{1,2}[-./]\d{1,2}")
NATIONAL_REGIONS = ("CN", "GB", "DE", "FR", "IT", "JP", "IN", "AU", "NL", "US")


def national_phone_valid(candidate: str) -> bool:
    import phonenumbers

    text = candidate.strip()
    if _DATE.fullmatch(text):
        return False
    regions = ("US",) if not digits(text).startswith("0") else NATIONAL_REGIONS
    for region in regions:
        try:
            number = phonenumbers.parse(text, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return True
    return False


def _cn_mobile(number: str) -> bool:
    """Mainland mobile numbers: 11 digits, 1 then 3-9 (the carriers' allocated ranges)."""
    return len(number) == 11 and number[0] == "1" and number[1] in "3456789"


def ip_valid(candidate: str) -> bool:
    """An address that points at someone: loopback and unspecified addresses are code
    (``127.0.0.1``, ``::1``, ``0.0.0.0``), not personal data."""
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return not (address.is_loopback or address.is_unspecified)


def ipv6_valid(candidate: str) -> bool:
    # "1::2" and "::2" are valid addresses but are what Python slices look like; an address
    # worth redacting has at least three groups.
    return candidate.count(":") >= 2 and len([g for g in candidate.split(":") if g]) >= 3 and ip_valid(candidate)


def shannon_bits(text: str) -> float:
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def secret_valid(candidate: str) -> bool:
    """A random-looking token: high entropy per character and both letters and digits, so a
    long English word after "token=" does not count."""
    value = candidate.rsplit("=", 1)[-1].rsplit(":", 1)[-1].strip(" \"'")
    if len(value) < 16:
        return False
    has_digit = any(char.isdigit() for char in value)
    has_alpha = any(char.isalpha() for char in value)
    return has_digit and has_alpha and shannon_bits(value) >= 3.0


def always(candidate: str) -> bool:
    return True


_TLDS = frozenset(
    [
        "com",
        "net",
        "org",
        "edu",
        "gov",
        "mil",
        "int",
        "io",
        "co",
        "cn",
        "uk",
        "de",
        "fr",
        "jp",
        "in",
        "au",
        "nl",
        "es",
        "it",
        "ru",
        "br",
        "ch",
        "se",
        "no",
        "dk",
        "fi",
        "be",
        "at",
        "pl",
        "cz",
        "kr",
        "tw",
        "hk",
        "sg",
        "me",
        "info",
        "biz",
        "dev",
        "app",
        "ai",
        "us",
        "ca",
    ]
)


# Words that make "look at this dot com" read like an address.
_NOT_NAMES = frozenset(
    [
        "this",
        "that",
        "these",
        "those",
        "it",
        "its",
        "the",
        "a",
        "an",
        "me",
        "you",
        "him",
        "her",
        "them",
        "us",
        "home",
        "work",
        "school",
        "all",
        "least",
        "most",
        "first",
        "last",
        "once",
        "night",
        "noon",
        "lunch",
        "dinner",
        "which",
        "what",
        "who",
    ]
)


def obfuscated_email_valid(candidate: str) -> bool:
    local, _, domain = re.split(r"\s*(?:[(\[{<]\s*)?(\bat\b|@|艾特)", candidate.lower(), maxsplit=1)
    labels = re.split(r"\s*(?:[(\[{<]\s*)?(?:\bdot\b|\.|点)(?:\s*[)\]}>])?\s*", domain.strip(" )]}>"))
    words = re.split(r"\W+", local.strip())
    return len(labels) >= 2 and labels[-1] in _TLDS and labels[-2] not in _NOT_NAMES and words[-1] not in _NOT_NAMES


@dataclass(frozen=True)
class _Detector:
    kind: str
    pattern: re.Pattern[str]
    valid: Callable[[str], bool]


def _compile(pattern: str) -> re.Pattern[str]:
    # ASCII: in Unicode mode Chinese characters are \\w, so "邮箱a@b.cn" would have no word
    # boundary before the address. Text is NFKC-normalised first, so full-width digits are ASCII.
    return re.compile(pattern, re.ASCII)


_SEP = r"[ \-.]?"
_AT = r"\s*(?:[(\[{<]\s*)?(?:\bat\b|@|艾特)(?:\s*[)\]}>])?\s*"
_DOT = r"\s*(?:[(\[{<]\s*)?(?:\bdot\b|点)(?:\s*[)\]}>])?\s*"
# Most specific first: on overlap the earlier detector wins (an ID number is not a card).
DETECTORS = (
    # The local part may hold any of RFC 5322's atext characters ("o'brien@...").
    _Detector(
        EMAIL, _compile(r"(?<![\w.%+'-])[A-Za-z0-9._%+'!#$&*/=?^`{|}~-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,24}\b"), always
    ),
    # Spelled out: "name dot surname at gmail dot com", "name(at)mail(dot)cn".
    _Detector(
        EMAIL,
        _compile(
            rf"(?i:(?<![\w.])[a-z0-9_%+-]+(?:(?:{_DOT}|\.)[a-z0-9_%+-]+)*{_AT}[a-z0-9-]+(?:(?:{_DOT}|\.)[a-z0-9-]+)+\b)"
        ),
        obfuscated_email_valid,
    ),
    # Vendor key formats are specific enough to need no validator.
    _Detector(
        SECRET,
        _compile(
            r"\b(?:sk-(?:proj-|ant-)?[A-Za-z0-9_\-]{20,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}"
            r"|xox[abprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_\-]{35}|glpat-[A-Za-z0-9_\-]{20,})"
        ),
        always,
    ),
    # Anything assigned to a key-like name, if it looks random.
    _Detector(
        SECRET,
        _compile(
            r"(?i:\b(?:api[_-]?key|secret(?:[_-]?key)?|token|password|passwd|access[_-]?key)[\"']?\s*[:=]\s*[\"']?)"
            r"[A-Za-z0-9_\-+/]{16,}"
        ),
        secret_valid,
    ),
    # Also written in groups ("110105 19491231 002X").
    _Detector(
        CN_ID,
        _compile(r"(?<![0-9A-Za-z])\d(?:[ \-]?\d){16}[ \-]?[\dXx](?![0-9A-Za-z])"),
        lambda c: cn_id_valid(re.sub(r"[ \-]", "", c)),
    ),
    _Detector(IBAN, _compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"), iban_valid),
    # A full stop may end the sentence after a number, but not continue it ("1.5").
    _Detector(CARD, _compile(rf"(?<![\d.+])\d(?:{_SEP}\d){{12,18}}(?!\d|\.\d)"), card_valid),
    # International (+, 00 or "(+86)" before the country code) and mainland mobiles; groups
    # may be split by spaces, hyphens or dots.
    _Detector(
        PHONE,
        _compile(
            r"(?<![\w+(])(?:(?:\+|00|\(\+)\d{1,3}\)?[ \-.]?(?:\(\d{1,4}\)[ \-.]?)?\d{1,4}(?:[ \-.]?\d{2,4}){1,4}"
            r"|(?:86[ \-.]?)?1[3-9]\d[ \-.]?\d{4}[ \-.]?\d{4})(?![\d]|\.\d)"
        ),
        phone_valid,
    ),
    # National formats: a trunk prefix 0 ("020 7946 0958", "(030) 1234567", "03-1234-5678") or
    # North America's "(415) 555-2671" / "415-555-2671" / "415.555.2671".
    _Detector(
        PHONE,
        _compile(
            r"(?<![\w+.\-])(?:(?:\(0\d{1,4}\)|0\d{1,4})[ \-.]?\d{2,4}(?:[ \-.]?\d{2,4}){1,3}"
            r"|(?:\(\d{3}\)[ ]?|\d{3}[\-.])\d{3}[\-.]\d{4})(?![\w]|[.\-]\d)"
        ),
        national_phone_valid,
    ),
    # Not after a letter ("v2.3.0.1") or a section sign, and not one part of a longer dotted number.
    # A prefix length after it makes a network ("10.0.0.0/8"), not anyone's address.
    _Detector(IPV4, _compile(r"(?<![\w.§])(?<!§ )(?:\d{1,3}\.){3}\d{1,3}(?!\d|\.\d|/\d)"), ip_valid),
    _Detector(
        # The colon before may be a label's ("IP:fe80::1"; NFKC makes "：" one too).
        IPV6,
        _compile(r"(?<![\w:\[])(?::(?!:))?((?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|:))(?![\w:]|/\d)"),
        ipv6_valid,
    ),
)


# Code is the user's question, not their data: nothing inside a fenced block or an inline
# span is redacted, nor a version, section or slice shaped like an address.
_CODE = re.compile(r"```.*?(?:```|$)|~~~.*?(?:~~~|$)|`[^`\n]+`", re.DOTALL)
_CODE_SHAPED = re.compile(
    r"(?i:\b(?:version|ver|release|section|sect|chapter|clause|article|rule|step|figure|table|v)\.?\s*)(?:\d+\.){2,}\d+"
    r"|\w\[[^\]\n]{0,40}\]"
)


def code_spans(text: str) -> list[tuple[int, int]]:
    return [match.span() for pattern in (_CODE, _CODE_SHAPED) for match in pattern.finditer(text)]


def find_pii(text: str, kinds: frozenset[str] | None = None) -> list[PiiMatch]:
    """Validated PII in ``text`` outside code, sorted and without overlaps."""
    code = code_spans(text) if ("`" in text or "[" in text or "~~~" in text or "." in text) else []
    found: list[PiiMatch] = []
    for detector in DETECTORS:
        if kinds is not None and detector.kind not in kinds:
            continue
        for candidate in detector.pattern.finditer(text):
            # A pattern with a group marks the value inside what it had to match around it.
            group = 1 if detector.pattern.groups else 0
            start, end = candidate.span(group)
            if any(start < other.end and other.start < end for other in found):
                continue
            if any(a <= start and end <= b for a, b in code):
                continue
            if detector.valid(candidate.group(group)):
                found.append(PiiMatch(detector.kind, start, end))
    return sorted(found, key=lambda match: match.start)


def placeholder(kind: str) -> str:
    return f"[{kind.upper()}]"


def redact(text: str, matches: list[PiiMatch]) -> str:
    """Each match replaced by a placeholder naming its kind, e.g. ``[EMAIL]``."""
    out, last = [], 0
    for match in matches:
        out += [text[last : match.start], placeholder(match.kind)]
        last = match.end
    out.append(text[last:])
    return "".join(out)


# Characters PII strings are made of; a single space or hyphen between digit groups belongs
# to them too (card and phone numbers are often written in groups).
_PII_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@._%+-:=()/'\"")


def unsafe_suffix_start(text: str) -> int:
    """Where the trailing run of text that could still grow into a PII string starts: a stream
    holds it back until a character that no PII string contains ends it."""
    index = len(text)
    while index > 0:
        char = text[index - 1]
        if char in _PII_CHARS or (char == " " and index > 1 and text[index - 2].isdigit()):
            index -= 1
        else:
            break
    return index


_DIGIT_END = re.compile(r"\d[\d \-.]{0,3}$")
_DIGIT_START = re.compile(r"^[\d \-.]{0,3}\d")


def find_in_messages(texts: list[str]) -> list[list[PiiMatch]]:
    """PII in each message, and values cut across messages (a card number sent in two
    parts): such a value is found in the messages joined, and each part is a match in the
    message that holds it."""
    found = [find_pii(text) for text in texts]
    # Only a boundary with digits on both sides can cut a number in two.
    if not any(_DIGIT_END.search(a) and _DIGIT_START.search(b) for a, b in pairwise(texts)):
        return found
    joined, starts = "", []
    for text in texts:
        starts.append(len(joined))
        joined += text + " "
    for match in find_pii(joined, frozenset({CARD, PHONE, CN_ID, IBAN})):
        first = max(i for i, start in enumerate(starts) if start <= match.start)
        last = max(i for i, start in enumerate(starts) if start < match.end)
        if first == last:
            continue
        for index in range(first, last + 1):
            start = max(match.start, starts[index]) - starts[index]
            end = min(match.end, starts[index] + len(texts[index])) - starts[index]
            if end > start and not any(start < m.end and m.start < end for m in found[index]):
                found[index] = sorted([*found[index], PiiMatch(match.kind, start, end)], key=lambda m: m.start)
    return found
