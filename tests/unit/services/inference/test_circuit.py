"""The circuit breaker's state machine, on a clock the test moves by hand."""

import pytest

from services.inference.circuit import BreakerConfig, CircuitBreaker, State

CONFIG = BreakerConfig(failure_threshold=3, slow_ttft_s=1.0, slow_threshold=2, slow_window_s=10.0, cooldown_s=5.0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def breaker(clock):
    return CircuitBreaker("m", CONFIG, clock)


def open_it(breaker):
    for _ in range(CONFIG.failure_threshold):
        breaker.record_failure()
    assert breaker.state is State.OPEN


def test_opens_after_consecutive_failures_only(breaker):
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # resets the run
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is State.CLOSED and breaker.allow()
    breaker.record_failure()
    assert breaker.state is State.OPEN and not breaker.allow()


def test_open_refuses_until_cooldown_then_lets_one_probe(breaker, clock):
    open_it(breaker)
    clock.now += CONFIG.cooldown_s - 0.1
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()
    assert breaker.state is State.HALF_OPEN
    assert not breaker.allow()  # the probe is in flight


def test_successful_probe_closes(breaker, clock):
    open_it(breaker)
    clock.now += CONFIG.cooldown_s
    assert breaker.allow()
    breaker.record_ttft(0.1)
    breaker.record_success()
    assert breaker.state is State.CLOSED
    assert all(breaker.allow() for _ in range(5))


def test_failed_probe_reopens_for_a_full_cooldown(breaker, clock):
    open_it(breaker)
    clock.now += CONFIG.cooldown_s
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is State.OPEN
    clock.now += CONFIG.cooldown_s - 0.1
    assert not breaker.allow()


def test_slow_probe_reopens(breaker, clock):
    open_it(breaker)
    clock.now += CONFIG.cooldown_s
    assert breaker.allow()
    breaker.record_ttft(CONFIG.slow_ttft_s + 1)
    assert breaker.state is State.OPEN
    breaker.record_success()  # the slow call finishing later does not close it
    assert breaker.state is State.OPEN


def test_lost_probe_does_not_wedge_half_open(breaker, clock):
    open_it(breaker)
    clock.now += CONFIG.cooldown_s
    assert breaker.allow()  # this probe never reports back
    clock.now += CONFIG.cooldown_s
    assert breaker.allow()


def test_slow_first_tokens_within_window_open(breaker, clock):
    breaker.record_ttft(CONFIG.slow_ttft_s + 0.5)
    clock.now += CONFIG.slow_window_s - 1
    breaker.record_ttft(CONFIG.slow_ttft_s)  # at the threshold is not slow
    assert breaker.state is State.CLOSED
    breaker.record_ttft(CONFIG.slow_ttft_s + 0.5)
    assert breaker.state is State.OPEN


def test_slow_first_tokens_outside_window_do_not_add_up(breaker, clock):
    breaker.record_ttft(CONFIG.slow_ttft_s + 0.5)
    clock.now += CONFIG.slow_window_s + 1
    breaker.record_ttft(CONFIG.slow_ttft_s + 0.5)
    assert breaker.state is State.CLOSED


def test_late_results_do_not_extend_the_cooldown(breaker, clock):
    open_it(breaker)
    clock.now += CONFIG.cooldown_s - 1
    breaker.record_failure()  # a call started before it opened
    breaker.record_ttft(CONFIG.slow_ttft_s + 1)
    clock.now += 1
    assert breaker.allow()
