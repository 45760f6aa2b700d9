"""A scripted stand-in for services.inference.triton_client.TritonClient."""


class FakeTriton:
    """Plays a script per model: Chunks are streamed, an exception is raised where it stands."""

    def __init__(self, scripts):
        self.scripts = scripts
        # (model, sampling) of every generate_stream call, in order.
        self.calls = []

    async def generate_stream(self, model, prompt_ids, sampling):
        self.calls.append((model, sampling))
        for item in self.scripts[model]:
            if isinstance(item, Exception):
                raise item
            yield item

    async def model_ready(self, name):
        return name in self.scripts

    async def close(self):
        pass
