"""The scanners besides the lexicon's (``verdicts.LexiconScanner``): PII and the output
moderation classifier, each a ``verdicts.Scanner``. The input side runs them all through
``guard.InputGuard``."""

from __future__ import annotations

from functools import cache
from typing import Literal

from llmesh.common.v1 import common_pb2
from textkit.safety import pii
from textkit.safety.verdicts import SafetyVerdict, blocked

PiiAction = Literal["redact", "block", "off"]


def pii_rule(matches: list[pii.PiiMatch]) -> str:
    """``pii:card,email``: the kinds found, for the verdict and the audit record."""
    return "pii:" + ",".join(sorted({match.kind for match in matches}))


def redaction_verdict(matches: list[pii.PiiMatch]) -> SafetyVerdict:
    """Not a block: records that the text went on with these kinds of PII redacted."""
    return SafetyVerdict(blocked=False, category=common_pb2.SAFETY_CATEGORY_PII, rule=pii_rule(matches))


class PiiScanner:
    """Blocks text that carries PII (the ``block`` policy; ``redact`` uses ``pii.find_pii``
    and ``pii.redact`` directly and never blocks)."""

    name = "pii"

    def __init__(self, message: str) -> None:
        self.message = message

    def scan(self, text: str) -> SafetyVerdict | None:
        matches = pii.find_pii(text)
        return blocked(common_pb2.SAFETY_CATEGORY_PII, pii_rule(matches), self.message) if matches else None


class _ProfanityModel:
    """alt-profanity-check's model (TF-IDF, then five LinearSVCs each with a sigmoid
    calibration, averaged) computed as one sparse product and one sigmoid: the same
    probabilities as its ``predict_prob``, but without scikit-learn's per-call checks across
    the five estimators, which cost about 7 ms a text, on every answer the output guard reads
    (tests/unit/textkit/safety/test_scanners_profanity.py holds the two equal)."""

    def __init__(self, vectorizer, model) -> None:
        import numpy as np

        from textkit.safety.tfidf import LinearTfidf

        calibrated = model.calibrated_classifiers_
        if list(model.classes_) != [0, 1] or any(c.method != "sigmoid" or len(c.calibrators) != 1 for c in calibrated):
            raise ValueError("alt-profanity-check's model is no longer binary sigmoid-calibrated LinearSVCs")
        # The five decisions in one product (textkit.safety.tfidf: the vectorizer's checks per
        # call cost more than the arithmetic).
        self.decisions = LinearTfidf(
            vectorizer,
            np.stack([c.estimator.coef_.ravel() for c in calibrated], axis=1),
            np.array([c.estimator.intercept_[0] for c in calibrated]),
        ).decisions
        self.slopes = np.array([c.calibrators[0].a_ for c in calibrated])
        self.offsets = np.array([c.calibrators[0].b_ for c in calibrated])

    def __call__(self, texts: list[str]):
        import numpy as np

        decisions = self.decisions(texts)
        # scikit-learn's _SigmoidCalibration: p = 1 / (1 + exp(a * decision + b)), then the mean.
        return (1.0 / (1.0 + np.exp(self.slopes * decisions + self.offsets))).mean(axis=1)


@cache
def _profanity_model() -> _ProfanityModel:
    # Imported on first use: loading scikit-learn and the model takes about a second.
    from profanity_check import profanity_check

    return _ProfanityModel(profanity_check.vectorizer, profanity_check.model)


def profanity_probability(text: str) -> float:
    return float(_profanity_model()([text])[0])


class ModerationScanner:
    """alt-profanity-check's linear classifier (offline: the model ships in the wheel) over
    English text; a probability at or above ``threshold`` blocks."""

    name = "moderation"

    def __init__(self, message: str, threshold: float) -> None:
        self.message = message
        self.threshold = threshold
        # Loaded now rather than on the first answer, which would wait a second for it.
        _profanity_model()

    def scan(self, text: str) -> SafetyVerdict | None:
        if not text.strip():
            return None
        probability = profanity_probability(text)
        if probability < self.threshold:
            return None
        return blocked(common_pb2.SAFETY_CATEGORY_MODERATION, f"moderation:profanity:{probability:.2f}", self.message)
