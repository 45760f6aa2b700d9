"""Train the PPO routing policy (``llmesh router train``): small, seeded, a minute on a CPU.

The problem is a contextual bandit, PPO's one-step case: a state is a prompt's features (the
learned router's, from the real stack) and a price of quality λ drawn log-uniformly from
``LAMBDA_RANGE``; the action is the small or the large model; the reward is the judged quality
of that model's answer minus λ times its cost (list price of the answer, in units of the large
model's mean request cost on the fit set). Only the chosen arm's reward is used, as in any RL
setting (the eval data knows both, which the learned router uses instead).

PPO (Schulman et al. 2017): a policy network and a value network (the baseline), advantages
r − V(s), the clipped surrogate objective with an entropy bonus, a few epochs of minibatch
updates per batch of fresh samples. Trained on the fit split only. λ is an input of both
networks, so one policy covers the whole cost–quality curve (services/router/ppo.py reads it).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from services.router.learned import FEATURES
from services.router.ppo import PPORouter

SEED = 7
LAMBDA_RANGE = (0.02, 4.0)
HIDDEN = 16
ITERATIONS = 120
BATCH = 1024
EPOCHS = 4
MINIBATCH = 256
CLIP = 0.2
ENTROPY = 0.01
VALUE_COEF = 0.5
LR = 3e-3
WEIGHT_DECAY = 1e-3


@dataclass
class TrainingLog:
    iteration: list[int]
    mean_reward: list[float]  # of the sampled actions
    greedy_reward: list[float]  # of the policy's argmax on the same states
    oracle_reward: list[float]  # the better arm on the same states (the bound)
    best_fixed_reward: list[float]  # the better of always-small and always-large, per state's λ
    large_share: list[float]
    seconds: float


def _mlp(inputs: int, outputs: int):
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(inputs, HIDDEN),
        torch.nn.Tanh(),
        torch.nn.Linear(HIDDEN, HIDDEN),
        torch.nn.Tanh(),
        torch.nn.Linear(HIDDEN, outputs),
    )


def train(
    x: np.ndarray,
    q_small: np.ndarray,
    q_large: np.ndarray,
    c_small: np.ndarray,
    c_large: np.ndarray,
    trained_on: dict,
    iterations: int = ITERATIONS,
    seed: int = SEED,
    progress=None,
) -> tuple[PPORouter, TrainingLog]:
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    z = torch.tensor((x - mean) / scale, dtype=torch.float32)
    unit = float(c_large.mean())
    quality = torch.tensor(np.stack([q_small, q_large], 1), dtype=torch.float32)
    price = torch.tensor(np.stack([c_small, c_large], 1) / unit, dtype=torch.float32)
    lo, hi = math.log(LAMBDA_RANGE[0]), math.log(LAMBDA_RANGE[1])
    policy, value = _mlp(z.shape[1] + 1, 2), _mlp(z.shape[1] + 1, 1)
    optimizer = torch.optim.Adam([*policy.parameters(), *value.parameters()], lr=LR, weight_decay=WEIGHT_DECAY)
    log = TrainingLog([], [], [], [], [], [], 0.0)

    for iteration in progress(range(iterations)) if progress else range(iterations):
        index = torch.tensor(rng.integers(0, len(z), BATCH))
        log_lambda = torch.tensor(rng.uniform(lo, hi, BATCH), dtype=torch.float32)
        state = torch.hstack([z[index], (2 * (log_lambda - lo) / (hi - lo) - 1)[:, None]])
        rewards_both = quality[index] - log_lambda.exp()[:, None] * price[index]
        with torch.no_grad():
            dist = torch.distributions.Categorical(logits=policy(state))
            action = dist.sample()
            old_logp = dist.log_prob(action)
            reward = rewards_both.gather(1, action[:, None])[:, 0]
            advantage = reward - value(state)[:, 0]
            advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
            greedy = rewards_both.gather(1, policy(state).argmax(1, keepdim=True))[:, 0]
        for _ in range(EPOCHS):
            for chunk in torch.randperm(BATCH).split(MINIBATCH):
                dist = torch.distributions.Categorical(logits=policy(state[chunk]))
                ratio = (dist.log_prob(action[chunk]) - old_logp[chunk]).exp()
                surrogate = torch.min(ratio * advantage[chunk], ratio.clamp(1 - CLIP, 1 + CLIP) * advantage[chunk])
                value_loss = (value(state[chunk])[:, 0] - reward[chunk]).pow(2).mean()
                loss = -surrogate.mean() + VALUE_COEF * value_loss - ENTROPY * dist.entropy().mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        log.iteration.append(iteration)
        log.mean_reward.append(float(reward.mean()))
        log.greedy_reward.append(float(greedy.mean()))
        log.oracle_reward.append(float(rewards_both.max(1).values.mean()))
        log.best_fixed_reward.append(float(rewards_both.mean(0).max()))
        log.large_share.append(float(action.float().mean()))
    log.seconds = time.perf_counter() - started

    layers = [
        {"w": layer.weight.detach().double().numpy().T.tolist(), "b": layer.bias.detach().double().numpy().tolist()}
        for layer in policy
        if isinstance(layer, torch.nn.Linear)
    ]
    router = PPORouter(
        "unsaved",
        list(FEATURES),
        mean.tolist(),
        scale.tolist(),
        layers,
        (lo, hi),
        {
            **trained_on,
            "seed": seed,
            "iterations": iterations,
            "batch": BATCH,
            "hidden": HIDDEN,
            "lambda_range": list(LAMBDA_RANGE),
            "cost_unit": unit,
            "seconds": round(log.seconds, 1),
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    return router, log


def plot(log: TrainingLog, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(log.iteration, log.mean_reward, label="sampled actions (PPO's reward)")
    left.plot(log.iteration, log.greedy_reward, label="greedy policy, same states")
    left.plot(log.iteration, log.oracle_reward, ":", color="black", label="oracle (better arm)")
    left.plot(log.iteration, log.best_fixed_reward, "--", color="grey", label="best fixed model")
    left.set_xlabel("PPO iteration (1024 states each)")
    left.set_ylabel("mean reward: quality − λ·cost")
    left.set_title("PPO routing policy: training reward (fit split)")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    right.plot(log.iteration, np.asarray(log.large_share) * 100)
    right.set_xlabel("PPO iteration")
    right.set_ylabel("sampled calls to the large model (%)")
    right.set_title(f"exploration → policy ({log.seconds:.0f} s on CPU)")
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
