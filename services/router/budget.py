"""Per-tenant spending budgets in Redis, shared by every router replica.

Spend is the price-list cost of the routed model for the request (prompt tokens plus the
expected output), added with INCRBYFLOAT to a key per tenant and UTC day, which expires after
two days. A tenant without a configured budget is never checked.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import redis.asyncio as redis

from mesh.redis_client import async_redis

KEY = "llmesh:budget:{tenant}:{day}"


def _day(now: dt.datetime) -> str:
    return now.strftime("%Y%m%d")


def seconds_to_reset(now: dt.datetime) -> int:
    tomorrow = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((tomorrow - now).total_seconds()))


@dataclass(frozen=True)
class BudgetState:
    limit: float
    spent: float
    retry_after_s: int

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.limit


class Budgets:
    def __init__(self, limits: dict[str, float], client: redis.Redis) -> None:
        self.limits = limits
        self.client = client

    @classmethod
    def from_settings(cls, settings) -> Budgets:
        return cls(dict(settings.tenant_budgets), async_redis(settings))

    def _key(self, tenant: str, now: dt.datetime) -> str:
        return KEY.format(tenant=tenant, day=_day(now))

    async def state(self, tenant: str, now: dt.datetime | None = None) -> BudgetState | None:
        if tenant not in self.limits:
            return None
        now = now or dt.datetime.now(dt.UTC)
        spent = float(await self.client.get(self._key(tenant, now)) or 0.0)
        return BudgetState(self.limits[tenant], spent, seconds_to_reset(now))

    async def charge(self, tenant: str, amount: float, now: dt.datetime | None = None) -> None:
        if tenant not in self.limits or amount <= 0:
            return
        key = self._key(tenant, now or dt.datetime.now(dt.UTC))
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.incrbyfloat(key, amount)
            pipe.expire(key, 2 * 86400)
            await pipe.execute()

    async def close(self) -> None:
        await self.client.aclose()
