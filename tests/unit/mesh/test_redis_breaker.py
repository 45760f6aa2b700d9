"""The Redis clients' circuit breaker (mesh.redis_client.CircuitBreaker), on a clock of its own."""

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mesh.redis_client import CircuitBreaker, CircuitOpen


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


def _fail(breaker: CircuitBreaker, error: Exception) -> None:
    with pytest.raises(type(error)), breaker.call():
        raise error


def _succeed(breaker: CircuitBreaker) -> None:
    with breaker.call():
        pass


def test_a_closed_breaker_lets_every_command_through(clock):
    breaker = CircuitBreaker(1.0, clock)
    for _ in range(3):
        _succeed(breaker)
    assert breaker.closed


@pytest.mark.parametrize("error", [RedisTimeoutError("timed out"), RedisConnectionError("refused")])
def test_a_command_that_found_redis_away_opens_it_and_the_next_ones_are_refused(clock, error):
    breaker = CircuitBreaker(1.0, clock)
    _fail(breaker, error)
    clock.now += 0.9
    with pytest.raises(CircuitOpen), breaker.call():
        pytest.fail("a command ran while the breaker was open")
    assert not breaker.closed


def test_after_the_open_time_one_probe_at_a_time_goes_through(clock):
    breaker = CircuitBreaker(1.0, clock)
    _fail(breaker, RedisTimeoutError())
    clock.now += 1.0
    # While the probe waits for Redis, every other command is refused.
    with breaker.call(), pytest.raises(CircuitOpen), breaker.call():
        pytest.fail("a second command ran during the probe")
    assert breaker.closed
    _succeed(breaker)


def test_a_failed_probe_opens_it_again_for_the_open_time(clock):
    breaker = CircuitBreaker(1.0, clock)
    _fail(breaker, RedisTimeoutError())
    clock.now += 1.5
    _fail(breaker, RedisTimeoutError())
    clock.now += 0.5
    with pytest.raises(CircuitOpen), breaker.call():
        pass
    clock.now += 0.5
    _succeed(breaker)
    assert breaker.closed


def test_an_error_reply_means_redis_is_there(clock):
    breaker = CircuitBreaker(1.0, clock)
    _fail(breaker, RedisConnectionError())
    clock.now += 1.0
    _fail(breaker, ResponseError("WRONGTYPE"))
    assert breaker.closed


def test_a_probe_given_up_by_its_caller_lets_the_next_command_probe(clock):
    breaker = CircuitBreaker(1.0, clock)
    _fail(breaker, RedisTimeoutError())
    clock.now += 1.0
    _fail(breaker, asyncio.CancelledError())
    assert not breaker.closed
    _succeed(breaker)
    assert breaker.closed


def test_open_time_zero_probes_at_once(clock):
    breaker = CircuitBreaker(0.0, clock)
    _fail(breaker, RedisTimeoutError())
    _succeed(breaker)
    assert breaker.closed
