"""The background accounting of finished requests: nothing queued is lost (kept and retried while
Redis is away, spooled past the queue's bound and at shutdown, replayed later), a write done is
not redone, and a bug in one record never stops the worker."""

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway import accounting as accounting_module
from gateway.accounting import Accounting, Pending
from gateway.audit import Outcome
from llmesh.common.v1 import common_pb2


class Store:
    """Tenancy and audit log at once: records what it was given, slowly; Redis away (or a bug)
    while told."""

    def __init__(self, delay_s: float = 0.01) -> None:
        self.delay_s = delay_s
        self.redis_away = False
        self.broken: set[str] = set()
        self.debited: list[tuple[str, int, str]] = []
        self.audited: list[str] = []

    async def debit(self, tenant: str, tokens: int, record_id: str) -> None:
        await self._call()
        self.debited.append((tenant, tokens, record_id))

    async def append(self, outcome: Outcome) -> None:
        await self._call()
        if outcome.request_id in self.broken:
            raise ValueError("a bug")
        self.audited.append(outcome.request_id)

    async def _call(self) -> None:
        await asyncio.sleep(self.delay_s)
        if self.redis_away:
            raise RedisConnectionError("Redis is away")


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(accounting_module, "RETRY_FIRST_S", 0.001)
    monkeypatch.setattr(accounting_module, "RETRY_MAX_S", 0.005)


def spool_files(directory):
    """The spool and the files claimed for a replay (not the lock file)."""
    return [path for path in directory.iterdir() if not path.name.endswith(".lock")]


def outcome(index: int) -> Outcome:
    return Outcome(request_id=f"r{index}", tenant="t", requested_model="auto", prompt_tokens=index, completion_tokens=1)


async def test_close_drains_every_queued_outcome_in_order(tmp_path):
    store = Store()
    accounting = Accounting(store, store, max_pending=100, spool_dir=tmp_path)
    outcomes = [outcome(index) for index in range(20)]
    for item in outcomes:
        await accounting.record(item)
    # Recording returns at once: the work is still pending when the requests are answered.
    assert accounting.pending > 0 and len(store.audited) < 20
    await accounting.close()
    assert store.audited == [f"r{i}" for i in range(20)]
    assert store.debited == [("t", i + 1, item.record_id) for i, item in enumerate(outcomes)]
    assert accounting.pending == 0 and not spool_files(tmp_path)


async def test_while_redis_is_away_outcomes_are_kept_and_written_once_it_is_back(tmp_path):
    store = Store(delay_s=0)
    store.redis_away = True
    accounting = Accounting(store, store, max_pending=100, spool_dir=tmp_path)
    for index in range(5):
        await accounting.record(outcome(index))
    await asyncio.sleep(0.05)
    assert store.audited == [] and accounting.pending > 0
    store.redis_away = False
    await accounting.flush()
    assert store.audited == [f"r{i}" for i in range(5)] and len(store.debited) == 5
    await accounting.close()


async def test_a_charge_done_is_not_redone_when_only_the_audit_failed(tmp_path):
    store = Store(delay_s=0)
    accounting = Accounting(store, store, max_pending=10, spool_dir=tmp_path)
    original_append = store.append
    failures = iter([True, True, False])

    async def append_failing_twice(item: Outcome) -> None:
        if next(failures):
            raise RedisConnectionError("Redis went away")
        await original_append(item)

    store.append = append_failing_twice  # type: ignore[method-assign]
    await accounting.record(outcome(1))
    await accounting.close()
    assert len(store.debited) == 1 and store.audited == ["r1"]


async def test_past_the_bound_outcomes_go_to_the_spool_and_are_replayed(tmp_path):
    store = Store(delay_s=0)
    store.redis_away = True
    accounting = Accounting(store, store, max_pending=2, spool_dir=tmp_path)
    for index in range(6):
        await accounting.record(outcome(index))
    # Recording never waits: what the queue cannot hold is in the spool file.
    spooled = (tmp_path / accounting_module.SPOOL_NAME).read_text().splitlines()
    assert len(spooled) >= 3
    store.redis_away = False
    await accounting.flush()
    # The queue drained, then the worker replayed the spool.
    for _ in range(100):
        if len(store.audited) == 6:
            break
        await asyncio.sleep(0.01)
    assert sorted(store.audited) == [f"r{i}" for i in range(6)] and len(store.debited) == 6
    await accounting.close()
    assert not spool_files(tmp_path)


async def test_what_is_left_at_shutdown_is_spooled_and_replayed_at_the_next_start(tmp_path):
    store = Store(delay_s=0)
    store.redis_away = True
    accounting = Accounting(store, store, max_pending=100, spool_dir=tmp_path)
    for index in range(4):
        await accounting.record(outcome(index))
    await accounting.close(wait_s=0.05)
    assert store.audited == []
    assert len((tmp_path / accounting_module.SPOOL_NAME).read_text().splitlines()) == 4

    store.redis_away = False
    after_restart = Accounting(store, store, max_pending=100, spool_dir=tmp_path)
    await after_restart.record(outcome(9))
    await after_restart.close()
    assert store.audited == ["r0", "r1", "r2", "r3", "r9"]


async def test_a_bug_in_one_record_is_logged_and_the_rest_is_still_written(tmp_path, caplog):
    store = Store()
    store.broken = {"r1"}
    accounting = Accounting(store, store, max_pending=10, spool_dir=tmp_path)
    for index in range(3):
        await accounting.record(outcome(index))
    await accounting.close()
    assert store.audited == ["r0", "r2"] and len(store.debited) == 3
    assert "accounting failed" in caplog.text


async def test_cache_hits_cost_nothing_when_the_operator_says_so(tmp_path):
    store = Store(delay_s=0)
    accounting = Accounting(store, store, max_pending=10, spool_dir=tmp_path, charge_cache_hits=False)
    hit = Outcome(request_id="h", tenant="t", requested_model="auto", prompt_tokens=5, completion_tokens=3, cache="hit")
    await accounting.record(hit)
    await accounting.record(outcome(1))
    await accounting.close()
    assert [tokens for _, tokens, _ in store.debited] == [0, 2] and store.audited == ["h", "r1"]


def test_a_spooled_outcome_reads_back_as_it_was():
    verdict = common_pb2.SafetyVerdict(blocked=True, rule="pii", message="no")
    item = Pending(
        Outcome(request_id="r", tenant="t", requested_model="auto", verdict=verdict, experiments={"e": "b"}),
        charged=True,
    )
    assert Pending.from_json(item.to_json()) == item
