"""Safety verdicts: the scanners that produce them and how a block is recorded."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Protocol

from opentelemetry import trace
from prometheus_client import Counter

from llmesh.common.v1 import common_pb2
from mesh import semconv
from textkit.safety.lexicon import Lexicon, Match, ReloadingLexicon

log = logging.getLogger(__name__)

SafetyVerdict = common_pb2.SafetyVerdict
# What every checked request or answer that was not blocked carries (copied into responses).
PASSED = SafetyVerdict(blocked=False)

SAFETY_BLOCKS = Counter(semconv.METRIC_SAFETY_BLOCKS, "Requests and answers blocked by a safety check", ["category"])


class Scanner(Protocol):
    """One safety check over one piece of normalised text; a verdict means block."""

    def scan(self, text: str) -> SafetyVerdict | None: ...


def blocked(category: common_pb2.SafetyCategory, rule: str, message: str) -> SafetyVerdict:
    return SafetyVerdict(blocked=True, category=category, rule=rule, message=message)


def lexicon_verdict(match: Match, message: str) -> SafetyVerdict:
    return blocked(common_pb2.SAFETY_CATEGORY_SENSITIVE_WORD, match.rule, message)


class LexiconScanner:
    """Complete text against the lexicon, through evasions (separators, leetspeak)."""

    name = "lexicon"

    def __init__(self, lexicon: Lexicon | ReloadingLexicon, message: str) -> None:
        self.lexicon = lexicon
        self.message = message

    def scan(self, text: str) -> SafetyVerdict | None:
        match = self.lexicon.current().find_evasive(text)
        return None if match is None else lexicon_verdict(match, self.message)


def first_verdict(scanners: Sequence[Scanner], texts: Iterable[str]) -> SafetyVerdict | None:
    for text in texts:
        for scanner in scanners:
            verdict = scanner.scan(text)
            if verdict is not None:
                return verdict
    return None


def category_name(category: common_pb2.SafetyCategory) -> str:
    """``SAFETY_CATEGORY_SENSITIVE_WORD`` -> ``sensitive_word``, for labels and attributes."""
    return common_pb2.SafetyCategory.Name(category).removeprefix("SAFETY_CATEGORY_").lower()


def record(verdict: SafetyVerdict) -> None:
    """Put the verdict on the current (RPC) span, and count and log a block."""
    span = trace.get_current_span()
    span.set_attribute(semconv.LLMESH_SAFETY_BLOCKED, verdict.blocked)
    if verdict.category == common_pb2.SAFETY_CATEGORY_UNSPECIFIED:
        return
    # A verdict that did not block may still have acted (PII redacted): it shows on the span.
    category = category_name(verdict.category)
    span.set_attribute(semconv.LLMESH_SAFETY_CATEGORY, category)
    span.set_attribute(semconv.LLMESH_SAFETY_RULE, verdict.rule)
    if not verdict.blocked:
        return
    SAFETY_BLOCKS.labels(category).inc()
    log.info("blocked by safety check", extra={"category": category, "rule": verdict.rule})
