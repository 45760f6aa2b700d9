"""The PPO-trained routing policy at run time: a tiny numpy forward pass from a committed artifact.

The policy network was trained offline (``tools/router/ppo.py``, ``llmesh router train``) with
proximal policy optimisation on a one-step problem: see the prompt's features and a price of
quality λ, choose the small or the large model, get reward = judged quality − λ · cost (cost in
units of the large model's mean request cost). λ is an input, so one network holds the whole
cost–quality curve; ``LLMESH_PPO_LAMBDA`` picks the operating point.

Its score for a request is the *indifference price*: the largest λ at which the network still
prefers the large model (bisection on log λ over the trained range). The large model is chosen
when that price exceeds the configured λ, which is the network's own choice at that λ whenever
its preference falls as λ grows (what the reward teaches it). Sweeping the threshold in the
evaluation is then sweeping λ.

Artifacts: ``models/artifacts/router/ppo/v<N>.json`` (a few KB).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mesh.catalog import REPO_ROOT

PPO_DIR = REPO_ROOT / "models/artifacts/router/ppo"
BISECTION_STEPS = 24


@dataclass(frozen=True)
class PPORouter:
    version: str
    features: list[str]
    mean: list[float]
    scale: list[float]
    # Policy MLP: [features..., log λ scaled] -> tanh -> tanh -> 2 logits (small, large).
    layers: list[dict]
    log_lambda_range: tuple[float, float]
    trained_on: dict

    def logits(self, z: np.ndarray, log_lambda: np.ndarray) -> np.ndarray:
        lo, hi = self.log_lambda_range
        scaled = (2.0 * (log_lambda - lo) / (hi - lo) - 1.0)[:, None]
        h = np.hstack([np.broadcast_to(z, (len(scaled), z.shape[-1])), scaled])
        for i, layer in enumerate(self.layers):
            h = h @ np.asarray(layer["w"]) + np.asarray(layer["b"])
            if i < len(self.layers) - 1:
                h = np.tanh(h)
        return h

    def p_large(self, x: np.ndarray, lam: float) -> float:
        z = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        logit = self.logits(z, np.array([math.log(lam)]))[0]
        return float(1.0 / (1.0 + math.exp(logit[0] - logit[1])))

    def indifference_lambda(self, x: np.ndarray) -> float:
        """The largest λ (within the trained range) at which the large model is still preferred."""
        z = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        lo, hi = self.log_lambda_range

        def prefers_large(log_lambda: float) -> bool:
            logit = self.logits(z, np.array([log_lambda]))[0]
            return bool(logit[1] > logit[0])

        if not prefers_large(lo):
            return math.exp(lo) / 2  # below the range: small even when quality is dearest
        if prefers_large(hi):
            return math.exp(hi) * 2
        for _ in range(BISECTION_STEPS):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if prefers_large(mid) else (lo, mid)
        return math.exp((lo + hi) / 2)


def _version_number(path: Path) -> int:
    stem = path.stem
    return int(stem[1:]) if stem.startswith("v") and stem[1:].isdigit() else -1


def save_next(router: PPORouter, directory: Path = PPO_DIR) -> Path:
    from dataclasses import asdict

    directory.mkdir(parents=True, exist_ok=True)
    versions = sorted(directory.glob("v*.json"), key=_version_number)
    number = _version_number(versions[-1]) + 1 if versions else 1
    path = directory / f"v{number}.json"
    data = {**asdict(router), "version": f"v{number}"}
    path.write_text(json.dumps(data) + "\n")
    return path


def load_ppo(path: Path | str | None = None) -> PPORouter:
    """The artifact at ``path`` (a file, or a directory meaning its newest version)."""
    from services.router.learned import FEATURES

    target = Path(path) if path else PPO_DIR
    if not target.is_absolute():
        target = REPO_ROOT / target
    if target.is_dir():
        versions = sorted(target.glob("v*.json"), key=_version_number)
        if not versions:
            raise FileNotFoundError(f"no PPO policy in {target}; run `llmesh router train`")
        target = versions[-1]
    data = json.loads(target.read_text())
    if data.get("features") != FEATURES:
        raise ValueError(f"{target}: trained on features {data.get('features')}, this router computes {FEATURES}")
    data["log_lambda_range"] = tuple(data["log_lambda_range"])
    return PPORouter(**data)
