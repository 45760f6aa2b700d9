"""Prompt-injection signals: known phrasings (English and Chinese), role-play jailbreaks and
payloads hidden in base64 or hex, which are decoded and checked with the same rules."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from services.safety.text import fold


@dataclass(frozen=True)
class InjectionMatch:
    rule: str
    start: int
    end: int


_IGNORE = r"(?:ignore|disregard|forget|override|bypass|skip)"
_PRIOR = r"(?:all\s+|any\s+|the\s+|your\s+|of\s+)*(?:previous|prior|above|earlier|preceding|system|original|initial)"
_RULES = r"(?:instructions?|prompts?|rules?|directions?|guidelines?|context|messages?)"
RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        ("injection:ignore-instructions", rf"\b{_IGNORE}\b[\s\w,]{{0,20}}?\b{_PRIOR}\s+{_RULES}\b"),
        ("injection:new-instructions", r"\b(?:your|the)\s+new\s+(?:instructions?|rules?|task)\s+(?:are|is)\b"),
        (
            "injection:reveal-prompt",
            r"\b(?:reveal|print|show|repeat|output|leak)\b[\s\w]{0,20}?\b(?:system|hidden|initial)\s+(?:prompt|instructions?|message)\b",
        ),
        (
            "injection:role-play",
            r"\b(?:you\s+are\s+now|from\s+now\s+on\s+you\s+are|pretend\s+(?:to\s+be|you\s+are)|act\s+as)\b[\s\w\-]{0,30}?\b(?:dan|unrestricted|unfiltered|jailbroken|evil|without\s+(?:any\s+)?(?:rules|restrictions|limits|filters))\b",
        ),
        (
            "injection:jailbreak",
            r"\b(?:do\s+anything\s+now|developer\s+mode|jailbreak(?:ed)?\s+mode|dan\s+mode|no\s+longer\s+bound\s+by)\b",
        ),
        (
            "injection:ignore-instructions",
            r"(?:忽略|无视|忘记|忘掉|不要理会)[^。！？\n]{0,10}(?:之前|以上|上面|先前|前面|所有|系统)[^。！？\n]{0,6}(?:指令|指示|规则|提示|设定|要求)",
        ),
        (
            "injection:reveal-prompt",
            r"(?:输出|显示|告诉我|泄露|重复)[^。！？\n]{0,8}(?:系统提示|系统指令|初始指令|隐藏指令)",
        ),
        (
            "injection:role-play",
            r"(?:你现在是|从现在开始你是|假装你是|扮演)[^。！？\n]{0,12}(?:没有任何限制|不受限制|无限制|没有限制|越狱|不受任何约束)",
        ),
        ("injection:jailbreak", r"(?:开发者模式|越狱模式|解除(?:所有)?限制)"),
    )
)

_BASE64 = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{24,}={0,2}(?![A-Za-z0-9+/=])")
_HEX = re.compile(r"(?<![0-9a-fA-F])(?:[0-9a-fA-F]{2}){16,}(?![0-9a-fA-F])")


def _decoded(blob: str) -> str | None:
    """The text a base64 or hex blob hides, if it decodes to readable UTF-8."""
    for decode in (lambda b: base64.b64decode(b + "=" * (-len(b) % 4), validate=True), bytes.fromhex):
        try:
            text = decode(blob).decode("utf-8")
        except (binascii.Error, ValueError, UnicodeDecodeError):
            continue
        if text and sum(char.isprintable() or char.isspace() for char in text) / len(text) > 0.95:
            return text
    return None


def _plain_match(text: str) -> tuple[str, int, int] | None:
    folded, offsets = fold(text)
    # Separators between words collapse, so "ignore   previous\ninstructions" still reads as one.
    for name, pattern in RULES:
        found = pattern.search(folded)
        if found is not None:
            return name, offsets[found.start()], offsets[found.end() - 1] + 1
    return None


def find_injection(text: str) -> InjectionMatch | None:
    plain = _plain_match(text)
    if plain is not None:
        return InjectionMatch(*plain)
    for pattern in (_BASE64, _HEX):
        for blob in pattern.finditer(text):
            hidden = _decoded(blob.group())
            if hidden is not None and _plain_match(hidden) is not None:
                return InjectionMatch("injection:encoded-payload", blob.start(), blob.end())
    return None
