"""The learned router: trained offline from logged routing outcomes, versioned, loaded at run time.

The one-step decision "small or large" is a contextual bandit with two arms. The logged outcome
of a query is the quality each arm got (both are known for the eval data; RouteLLM's preference
data is the same full-information case), and the standard reduction turns it into a weighted
classification: label = "large answered better", weight = |quality difference|, so the queries
where the choice matters most count most. A logistic regression on standardised features learns
p(large better); a ridge regression on the same features predicts the gain itself, which the
cost-aware policy trades against price.

Artifacts: ``models/artifacts/router/learned/v<N>.json`` (a few hundred bytes); ``train``
writes the next version, ``LLMESH_LEARNED_ROUTER_PATH`` picks one (a directory means its newest).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

from mesh.catalog import REPO_ROOT
from services.router.signals import Signals, lexical_features

LEARNED_DIR = REPO_ROOT / "models/artifacts/router/learned"
FEATURES = ["log_perplexity", "log_prompt_tokens", *lexical_features("")]


def feature_vector(values: dict[str, float]) -> np.ndarray:
    return np.array(
        [
            math.log(max(values["perplexity"], 1e-6)),
            math.log(max(values["prompt_tokens"], 1.0)),
            *(values[name] for name in FEATURES[2:]),
        ],
        dtype=np.float64,
    )


@dataclass(frozen=True)
class LearnedRouter:
    version: str
    features: list[str]
    mean: list[float]
    scale: list[float]
    # Logistic regression: p(large better) = sigmoid(w . z + b), z the standardised features.
    weights: list[float]
    bias: float
    # Ridge regression: expected quality gain of the large model = v . z + c.
    gain_weights: list[float]
    gain_bias: float
    trained_on: dict

    def _z(self, x: np.ndarray) -> np.ndarray:
        return (x - np.asarray(self.mean)) / np.asarray(self.scale)

    def p_large_better(self, x: np.ndarray) -> float:
        return float(1.0 / (1.0 + np.exp(-(self._z(x) @ np.asarray(self.weights) + self.bias))))

    def expected_gain(self, x: np.ndarray) -> float:
        return float(self._z(x) @ np.asarray(self.gain_weights) + self.gain_bias)

    async def featurize(self, signals: Signals) -> np.ndarray:
        values = {"perplexity": await signals.perplexity(), "prompt_tokens": signals.prompt_tokens()}
        return feature_vector({**values, **signals.lexical()})


def fit(
    x: np.ndarray, gain: np.ndarray, l2: float = 1.0
) -> tuple[np.ndarray, float, np.ndarray, float, np.ndarray, np.ndarray]:
    """(w, b, v, c, mean, scale) from features ``x`` and the large model's quality gain per query."""
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    z = (x - mean) / scale
    y = (gain > 0).astype(np.float64)
    weight = np.abs(gain) / max(np.abs(gain).mean(), 1e-12)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:-1], theta[-1]
        logits = z @ w + b
        # log(1 + e^l) - y*l, weighted; logaddexp keeps it finite.
        value = np.sum(weight * (np.logaddexp(0.0, logits) - y * logits)) + 0.5 * l2 * w @ w
        residual = weight * (1.0 / (1.0 + np.exp(-logits)) - y)
        return value, np.append(z.T @ residual + l2 * w, residual.sum())

    theta = minimize(loss, np.zeros(z.shape[1] + 1), jac=True, method="L-BFGS-B").x
    design = np.hstack([z, np.ones((len(z), 1))])
    ridge = l2 * np.eye(design.shape[1])
    ridge[-1, -1] = 0.0  # the intercept is not shrunk
    gain_theta = np.linalg.solve(design.T @ design + ridge, design.T @ gain)
    return theta[:-1], float(theta[-1]), gain_theta[:-1], float(gain_theta[-1]), mean, scale


def train(x: np.ndarray, gain: np.ndarray, version: str, trained_on: dict, l2: float = 1.0) -> LearnedRouter:
    w, b, v, c, mean, scale = fit(x, gain, l2)
    return LearnedRouter(
        version,
        list(FEATURES),
        mean.tolist(),
        scale.tolist(),
        w.tolist(),
        b,
        v.tolist(),
        c,
        {**trained_on, "l2": l2, "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    )


def _version_number(path: Path) -> int:
    match = re.fullmatch(r"v(\d+)\.json", path.name)
    return int(match.group(1)) if match else -1


def latest(directory: Path = LEARNED_DIR) -> Path | None:
    versions = sorted(directory.glob("v*.json"), key=_version_number)
    return versions[-1] if versions else None


def save_next(router: LearnedRouter, directory: Path = LEARNED_DIR) -> Path:
    """Writes ``v<N+1>.json``; earlier versions stay, so a rollback is a setting."""
    directory.mkdir(parents=True, exist_ok=True)
    current = latest(directory)
    number = _version_number(current) + 1 if current else 1
    path = directory / f"v{number}.json"
    router = LearnedRouter(**{**asdict(router), "version": f"v{number}"})
    path.write_text(json.dumps(asdict(router), indent=1) + "\n")
    return path


def load_router(path: Path | str | None = None) -> LearnedRouter:
    """The artifact at ``path`` (a file, or a directory meaning its newest version)."""
    target = Path(path) if path else LEARNED_DIR
    if not target.is_absolute():
        target = REPO_ROOT / target
    if target.is_dir():
        found = latest(target)
        if found is None:
            raise FileNotFoundError(f"no learned router in {target}; run `llmesh router train`")
        target = found
    data = json.loads(target.read_text())
    if data.get("features") != FEATURES:
        raise ValueError(f"{target}: trained on features {data.get('features')}, this router computes {FEATURES}")
    return LearnedRouter(**data)
