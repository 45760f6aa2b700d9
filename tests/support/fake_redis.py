"""An in-memory stand-in for the few redis.asyncio commands the router's budgets use."""


class FakeRedis:
    """The three commands Budgets uses."""

    def __init__(self):
        self.data, self.ttl = {}, {}

    async def get(self, key):
        return self.data.get(key)

    def pipeline(self, transaction=True):
        return _FakePipeline(self)

    async def aclose(self):
        pass


class _FakePipeline:
    def __init__(self, redis):
        self.redis, self.ops = redis, []

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        pass

    def incrbyfloat(self, key, amount):
        self.ops.append(lambda: self.redis.data.__setitem__(key, float(self.redis.data.get(key, 0.0)) + amount))

    def expire(self, key, seconds):
        self.ops.append(lambda: self.redis.ttl.__setitem__(key, seconds))

    async def execute(self):
        for op in self.ops:
            op()
