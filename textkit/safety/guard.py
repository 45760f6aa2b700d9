"""The input guard over a whole conversation: every message, and all of them joined in order
(system included), so that a term or an instruction cut across messages is seen too."""

from __future__ import annotations

from collections.abc import Sequence

from llmesh.common.v1 import common_pb2
from textkit.safety import injection, pii
from textkit.safety.classifier import INJECTION, GuardClassifier
from textkit.safety.deobfuscate import ALWAYS_DECODED, clean, reading_views
from textkit.safety.lexicon import Lexicon, ReloadingLexicon
from textkit.safety.verdicts import SafetyVerdict, blocked, lexicon_verdict

# Joins messages for the conversation view: a line break, so that words stay apart.
MESSAGE_JOINER = "\n"
# Conversations up to this long are also classified whole (see ``InputGuard._learned``).
CONVERSATION_CLASSIFIED_CHARS = 600


class InputGuard:
    """Checks in order, the first that blocks wins: chat-template markers, the lexicon and
    the injection rules over every reading of the conversation, the learned layer over each
    message and the conversation, then PII (``block`` policy only)."""

    def __init__(
        self,
        lexicon: Lexicon | ReloadingLexicon,
        blocked_message: str,
        injection_message: str | None,
        pii_message: str | None = None,
        classifier: GuardClassifier | None = None,
    ) -> None:
        self.lexicon = lexicon
        self.blocked_message = blocked_message
        # None turns the check off.
        self.injection_message = injection_message
        self.pii_message = pii_message
        self.classifier = classifier

    def scan_messages(self, texts: Sequence[str]) -> SafetyVerdict | None:
        conversation = MESSAGE_JOINER.join(texts)
        if self.injection_message is not None:
            for text in texts:
                marker = injection.find_template_marker(text)
                if marker is not None:
                    return blocked(common_pb2.SAFETY_CATEGORY_PROMPT_INJECTION, marker.rule, self.injection_message)
        # Reading is done character by character, so the conversation's reading is the
        # messages' readings joined (markup or an override cut across messages aside).
        readings = [clean(text) for text in texts]
        views = reading_views(conversation, MESSAGE_JOINER.join(readings))
        match = self.lexicon.current().find_in_views(views)
        if match is not None:
            return lexicon_verdict(match, self.blocked_message)
        if self.injection_message is not None:
            found = injection.find_in_views(views)
            if found is not None:
                return blocked(common_pb2.SAFETY_CATEGORY_PROMPT_INJECTION, found.rule, self.injection_message)
        if self.classifier is not None:
            verdict = self._learned(self.classifier, readings, views)
            if verdict is not None:
                return verdict
        if self.pii_message is not None:
            found_pii = [match for matches in pii.find_in_messages(list(texts)) for match in matches]
            if found_pii:
                kinds = ",".join(sorted({match.kind for match in found_pii}))
                return blocked(common_pb2.SAFETY_CATEGORY_PII, f"pii:{kinds}", self.pii_message)
        return None

    def _learned(
        self, classifier: GuardClassifier, messages: list[str], views: list[tuple[str, str]]
    ) -> SafetyVerdict | None:
        # Each message's reading and each decoded payload; the conversation as a whole too
        # while it is short, which is where a request split across turns hides (the
        # classifier's cost grows with the characters it reads).
        readings = list(messages)
        if len(messages) > 1 and len(views[0][1]) <= CONVERSATION_CLASSIFIED_CHARS:
            readings.append(views[0][1])
        readings += [view for name, view in views[1:] if name not in ALWAYS_DECODED]
        found = classifier.verdict(readings)
        if found is None:
            return None
        label, probability = found
        if label == INJECTION:
            if self.injection_message is None:
                return None
            return blocked(
                common_pb2.SAFETY_CATEGORY_PROMPT_INJECTION,
                f"injection:classifier:{probability:.2f}",
                self.injection_message,
            )
        return blocked(
            common_pb2.SAFETY_CATEGORY_SENSITIVE_WORD, f"lexicon:classifier:{probability:.2f}", self.blocked_message
        )
