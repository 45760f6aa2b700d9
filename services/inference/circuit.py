"""A circuit breaker per model, so a failing or slow model stops taking traffic for a while."""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerConfig:
    # Consecutive failed calls that open the breaker.
    failure_threshold: int = 5
    # A time to first token above this counts as slow ...
    slow_ttft_s: float = 5.0
    # ... and this many slow calls within the window open the breaker.
    slow_threshold: int = 3
    slow_window_s: float = 60.0
    # How long an open breaker refuses calls before letting a probe through.
    cooldown_s: float = 15.0


class CircuitBreaker:
    """closed → open after ``failure_threshold`` consecutive failures, or ``slow_threshold`` slow
    first tokens within ``slow_window_s``; open → half-open once ``cooldown_s`` has passed.
    Half-open lets one probe call through: its success closes the breaker, its failure or a
    slow first token opens it again.

    Only one probe is let through per cool-down, so a probe whose result never comes back (its
    caller went away) delays recovery by one cool-down instead of wedging the breaker.
    """

    def __init__(self, name: str, config: BreakerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.config = config
        self.clock = clock
        self._state = State.CLOSED
        self._failures = 0
        self._slow: deque[float] = deque()
        self._opened_at = 0.0
        self._probe_at: float | None = None

    @property
    def state(self) -> State:
        return self._state

    def allow(self) -> bool:
        """Whether a call may go to the model now; a half-open breaker counts it as its probe."""
        if self._state is State.CLOSED:
            return True
        now = self.clock()
        if self._state is State.OPEN:
            if now - self._opened_at < self.config.cooldown_s:
                return False
            self._state = State.HALF_OPEN
            log.info("circuit half-open", extra={"model": self.name})
        if self._probe_at is not None and now - self._probe_at < self.config.cooldown_s:
            return False
        self._probe_at = now
        return True

    def record_ttft(self, ttft_s: float) -> None:
        if ttft_s <= self.config.slow_ttft_s or self._state is State.OPEN:
            return
        now = self.clock()
        self._slow.append(now)
        while now - self._slow[0] > self.config.slow_window_s:
            self._slow.popleft()
        if self._state is State.HALF_OPEN or len(self._slow) >= self.config.slow_threshold:
            self._open(f"{len(self._slow)} slow first tokens (last {ttft_s:.2f}s)")

    def record_success(self) -> None:
        if self._state is State.HALF_OPEN:
            self._state = State.CLOSED
            self._slow.clear()
            log.info("circuit closed", extra={"model": self.name})
        self._failures = 0

    def record_failure(self) -> None:
        # While open, results of calls started before it opened change nothing (and must not
        # push the end of the cool-down further away).
        if self._state is State.OPEN:
            return
        self._failures += 1
        if self._state is State.HALF_OPEN or self._failures >= self.config.failure_threshold:
            self._open(f"{self._failures} consecutive failures")

    def _open(self, why: str) -> None:
        self._state = State.OPEN
        self._opened_at = self.clock()
        self._probe_at = None
        self._failures = 0
        log.warning("circuit opened", extra={"model": self.name, "why": why})
