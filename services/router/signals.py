"""What a routing policy may know about one prompt (its perplexity under the scoring model, its
length, cheap lexical features), shared by the policies and the learned models they load."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from services.router.settings import RouterSettings

PERPLEXITY = "perplexity"
PROMPT_TOKENS = "prompt_tokens"
# The small model's mean token log-prob on its own answer; known offline only (the cascade
# measures it online on the real answer, in the gateway).
SMALL_ANSWER_LOGPROB = "small_answer_logprob"


class SignalUnavailable(Exception):
    """A signal a policy needs could not be computed; the router then uses its default model."""


class Scorer(Protocol):
    async def score(self, prompt_ids: Sequence[int]) -> np.ndarray: ...


class ScoringFailed(Exception):
    """The scorer could not score the prompt (the inference service down, the circuit open...)."""


def perplexity(logprobs: np.ndarray) -> float:
    return float(np.exp(-np.mean(logprobs, dtype=np.float64)))


CODE_MARKS = frozenset("`()[]{}=_'\"")


def lexical_features(prompt_text: str) -> dict[str, float]:
    """Cheap text features of the (chat-templated) prompt, the same online and offline."""
    words = prompt_text.split()
    size = max(len(prompt_text), 1)
    return {
        "chars": float(len(prompt_text)),
        "words": float(len(words)),
        "mean_word_len": float(np.mean([len(w) for w in words])) if words else 0.0,
        "dots": float(prompt_text.count(".")),
        "underscores": float(prompt_text.count("_")),
        "uppercase_share": sum(c.isupper() for c in prompt_text) / size,
        "digit_share": sum(c.isdigit() for c in prompt_text) / size,
        # Chinese text and code are where a small model falls behind a larger one first.
        "cjk_share": sum("\u4e00" <= c <= "\u9fff" for c in prompt_text) / size,
        "code_marks": float(sum(c in CODE_MARKS for c in prompt_text)),
    }


class Signals:
    """What policies may know about one prompt.

    Each signal is computed on first use and kept, so a policy that never asks for perplexity
    never pays for scoring; ``values`` holds the ones computed, for the response and the trace.
    Offline, ``values`` is filled in advance and no scorer is called.
    """

    def __init__(
        self,
        scorer: Scorer | None,
        prompt_ids: Sequence[int],
        settings: RouterSettings,
        prompt_text: str = "",
        values: dict[str, float] | None = None,
    ) -> None:
        self.values: dict[str, float] = dict(values or {})
        self._scorer = scorer
        self._prompt_ids = list(prompt_ids)
        self._prompt_text = prompt_text
        self._settings = settings

    async def perplexity(self) -> float:
        if PERPLEXITY not in self.values:
            # Only the end of a long prompt is scored: the scoring model's context is short, and
            # the latest turns say most about how hard the answer will be.
            ids = self._prompt_ids[-self._settings.max_score_tokens :]
            if len(ids) < 2 or self._scorer is None:
                raise SignalUnavailable("prompt too short to score")
            try:
                async with asyncio.timeout(self._settings.score_timeout_s):
                    logprobs = await self._scorer.score(ids)
            except ScoringFailed as error:
                # The reason stays short (it goes into every response); the cause is logged.
                raise SignalUnavailable("scoring model unavailable") from error
            except TimeoutError as error:
                raise SignalUnavailable(f"scoring timed out after {self._settings.score_timeout_s}s") from error
            self.values[PERPLEXITY] = perplexity(logprobs)
        return self.values[PERPLEXITY]

    def prompt_tokens(self) -> float:
        return self.values.setdefault(PROMPT_TOKENS, float(len(self._prompt_ids)))

    def lexical(self) -> dict[str, float]:
        # Not put into ``values``: they are cheap to recompute and would crowd the trace.
        if "chars" in self.values:
            return {k: self.values[k] for k in lexical_features("")}
        return lexical_features(self._prompt_text)
