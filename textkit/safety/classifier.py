"""The input guard's learned layer: a character n-gram model (TF-IDF and logistic regression,
scikit-learn) that scores what a text reads as for prompt injection and for requests the
lexicon's terms stand for, in English and Chinese. It generalises past the rules' phrasings;
trained offline by ``python -m tools.safety.train`` on data that script generates (seeded),
never on public scanners' probe sets, and shipped small in ``models/artifacts/safety/``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from mesh.settings import REPO_ROOT
from textkit.safety.tfidf import LinearTfidf

log = logging.getLogger(__name__)

DEFAULT_MODEL = REPO_ROOT / "models" / "artifacts" / "safety" / "guard.joblib"
INJECTION, SENSITIVE, BENIGN = "injection", "sensitive", "benign"


@dataclass(frozen=True)
class Scores:
    injection: float
    sensitive: float


class GuardClassifier:
    """The pipeline's probabilities, computed by textkit.safety.tfidf (the pipeline's own
    checks per call cost ten times the arithmetic; tests/unit/textkit/safety/test_classifier.py
    holds the two equal)."""

    def __init__(self, pipeline, thresholds: dict[str, float]) -> None:
        vectorizer, model = (step for _, step in pipeline.steps)
        classes = list(pipeline.classes_)
        if len(classes) < 3:
            raise ValueError("the input guard's classifier must be multinomial (benign, injection, sensitive)")
        self._linear = LinearTfidf(vectorizer, model.coef_.T, model.intercept_)
        self.pipeline = pipeline
        self.thresholds = thresholds
        self._injection, self._sensitive = classes.index(INJECTION), classes.index(SENSITIVE)

    @classmethod
    def load(cls, path: Path = DEFAULT_MODEL) -> GuardClassifier:
        bundle = _load(path)
        return cls(bundle["pipeline"], bundle["thresholds"])

    def scores(self, texts: list[str]) -> list[Scores]:
        """The scores of each text (a conversation's views, in one call)."""
        if not texts:
            return []
        decisions = self._linear.decisions(texts)
        # Multinomial logistic regression: the softmax of the decisions (scikit-learn's predict_proba).
        exp = np.exp(decisions - decisions.max(axis=1, keepdims=True))
        probabilities = exp / exp.sum(axis=1, keepdims=True)
        return [Scores(float(row[self._injection]), float(row[self._sensitive])) for row in probabilities]

    def verdict(self, texts: list[str]) -> tuple[str, float] | None:
        """``(label, probability)`` of the most confident text over its label's threshold."""
        best = None
        for scores in self.scores(texts):
            for label, value in ((INJECTION, scores.injection), (SENSITIVE, scores.sensitive)):
                if value >= self.thresholds[label] and (best is None or value > best[1]):
                    best = (label, value)
        return best


@cache
def _load(path: Path) -> dict:
    import joblib

    log.info("loading the input guard's classifier", extra={"path": str(path)})
    return joblib.load(path)
