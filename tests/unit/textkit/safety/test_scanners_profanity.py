"""The output guard's profanity classifier computed directly gives alt-profanity-check's own
probabilities (to rounding), on clean, profane, mixed, empty and non-English texts."""

import random

import numpy as np
from profanity_check import predict_prob

from textkit.safety.scanners import _profanity_model

WORDS = [
    "hello",
    "damn",
    "shit",
    "nice",
    "world",
    "fuck",
    "you",
    "are",
    "the",
    "weather",
    "python",
    "list",
    "bitch",
    "idiot",
    "lovely",
    "crap",
    "ass",
    "ok",
    "Paris",
    "capital",
    "France",
    "cat",
]


def test_the_direct_computation_matches_the_library():
    rng = random.Random(7)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40))) for _ in range(300)]
    texts += ["", " ", "fuck you", "What is the capital of France?", "你好，世界", "x" * 5000]
    expected = predict_prob(texts)
    got = _profanity_model()(texts)
    assert np.allclose(got, expected, rtol=0, atol=1e-12)
    # The texts span both sides of the default threshold (0.9), so the check is not vacuous.
    assert (expected > 0.9).any() and (expected < 0.1).any()
