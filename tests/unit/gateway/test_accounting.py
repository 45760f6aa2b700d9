"""The background accounting of finished requests: nothing queued is lost, a full queue makes
requests wait rather than drop records, and a failing store never stops the worker."""

import asyncio

from redis.exceptions import RedisError

from gateway.accounting import Accounting
from gateway.audit import Outcome


class SlowStore:
    """Tenancy and audit log at once: records what it was given, slowly, failing when told."""

    def __init__(self, delay_s: float = 0.01, failing: set[str] = frozenset()) -> None:
        self.delay_s = delay_s
        self.failing = failing
        self.debited: list[tuple[str, int]] = []
        self.audited: list[str] = []

    async def debit(self, tenant: str, tokens: int) -> None:
        await asyncio.sleep(self.delay_s)
        self.debited.append((tenant, tokens))

    async def append(self, outcome: Outcome) -> None:
        await asyncio.sleep(self.delay_s)
        if outcome.request_id in self.failing:
            raise RedisError("down")
        self.audited.append(outcome.request_id)


def outcome(index: int) -> Outcome:
    return Outcome(request_id=f"r{index}", tenant="t", requested_model="auto", prompt_tokens=index, completion_tokens=1)


async def test_close_drains_every_queued_outcome_in_order():
    store = SlowStore()
    accounting = Accounting(store, store, max_pending=100)
    for index in range(20):
        await accounting.record(outcome(index))
    # Recording returns at once: the work is still pending when the requests are answered.
    assert accounting.pending > 0 and len(store.audited) < 20
    await accounting.close()
    assert store.audited == [f"r{i}" for i in range(20)]
    assert store.debited == [("t", i + 1) for i in range(20)]
    assert accounting.pending == 0


async def test_a_full_queue_makes_the_request_wait_instead_of_dropping():
    store = SlowStore(delay_s=0.02)
    accounting = Accounting(store, store, max_pending=2)
    recorded = asyncio.gather(*(accounting.record(outcome(i)) for i in range(6)))
    await asyncio.sleep(0.01)
    # Two wait in the queue, one is being written; the others wait for room.
    assert not recorded.done() and accounting.pending <= 2
    await recorded
    await accounting.close()
    assert sorted(store.audited) == sorted(f"r{i}" for i in range(6))


async def test_a_failing_store_is_logged_and_the_rest_is_still_written(caplog):
    store = SlowStore(failing={"r1"})
    accounting = Accounting(store, store, max_pending=10)
    for index in range(3):
        await accounting.record(outcome(index))
    await accounting.close()
    assert store.audited == ["r0", "r2"] and len(store.debited) == 3
    assert "could not append the audit record" in caplog.text


async def test_cache_hits_cost_nothing_when_the_operator_says_so():
    store = SlowStore(delay_s=0)
    accounting = Accounting(store, store, max_pending=10, charge_cache_hits=False)
    hit = Outcome(request_id="h", tenant="t", requested_model="auto", prompt_tokens=5, completion_tokens=3, cache="hit")
    await accounting.record(hit)
    await accounting.record(outcome(1))
    await accounting.close()
    assert store.debited == [("t", 0), ("t", 2)] and store.audited == ["h", "r1"]
