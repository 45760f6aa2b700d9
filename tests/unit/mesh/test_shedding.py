"""Admission control (mesh.shedding): bounded slots and queue, refusal at once, interactive
before batch."""

import asyncio

import pytest

from mesh.shedding import BATCH, INTERACTIVE, Admission, Overloaded


async def _holder(admission: Admission, priority: str, release: asyncio.Event, order: list[str], name: str):
    async with admission.slot(priority):
        order.append(name)
        await release.wait()


async def test_overflow_is_refused_at_once_and_slots_are_handed_on():
    admission = Admission(max_concurrent=1, max_queued=1)
    release = asyncio.Event()
    order: list[str] = []
    first = asyncio.create_task(_holder(admission, INTERACTIVE, release, order, "first"))
    queued = asyncio.create_task(_holder(admission, INTERACTIVE, release, order, "queued"))
    await asyncio.sleep(0)
    assert admission.in_flight == 1 and admission.queued == 1
    with pytest.raises(Overloaded):
        await admission.acquire()
    release.set()
    await asyncio.gather(first, queued)
    assert order == ["first", "queued"]
    assert admission.in_flight == 0 and admission.queued == 0


async def test_interactive_waiters_go_before_batch_and_take_a_full_queue_from_batch():
    admission = Admission(max_concurrent=1, max_queued=2)
    release = asyncio.Event()
    order: list[str] = []
    tasks = [asyncio.create_task(_holder(admission, INTERACTIVE, release, order, "running"))]
    await asyncio.sleep(0)
    for name in ("batch-1", "batch-2"):
        tasks.append(asyncio.create_task(_holder(admission, BATCH, release, order, name)))
    await asyncio.sleep(0)
    # The queue is full of batch requests: an interactive one takes the newest one's place,
    # and a batch one is refused.
    tasks.append(asyncio.create_task(_holder(admission, INTERACTIVE, release, order, "interactive")))
    await asyncio.sleep(0)
    with pytest.raises(Overloaded):
        await admission.acquire(BATCH)
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert order == ["running", "interactive", "batch-1"]
    assert isinstance(results[2], Overloaded)
    assert admission.in_flight == 0 and admission.queued == 0


async def test_a_waiter_that_gives_up_leaves_the_queue():
    admission = Admission(max_concurrent=1, max_queued=1)
    await admission.acquire()
    waiter = asyncio.create_task(admission.acquire())
    await asyncio.sleep(0)
    assert admission.queued == 1
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert admission.queued == 0
    admission.release()
    assert admission.in_flight == 0


async def test_no_limit_when_concurrency_is_zero():
    admission = Admission(max_concurrent=0, max_queued=0)
    for _ in range(100):
        await admission.acquire(BATCH)
    assert admission.queued == 0
