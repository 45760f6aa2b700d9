"""A scripted stand-in for services.inference.triton_client.TritonClient."""

import asyncio

from services.inference.triton_client import Chunk


def answer(*token_ids: int, finish: str = "stop", prompt_tokens: int = 3) -> list[Chunk]:
    """One chunk per token with the engine's running counts, the last one finishing."""
    *head, last = token_ids
    chunks = [Chunk(0, [t], [-0.5], prompt_tokens=prompt_tokens, completion_tokens=i + 1) for i, t in enumerate(head)]
    return [
        *chunks,
        Chunk(0, [last], [-0.5], finish_reason=finish, prompt_tokens=prompt_tokens, completion_tokens=len(token_ids)),
    ]


class FakeTriton:
    """Plays a script per model: Chunks are streamed, an exception is raised where it stands, an
    asyncio.Event is waited for (a call held in the engine until the test sets it)."""

    def __init__(self, scripts, logprobs=None):
        self.scripts = scripts
        # Per model, what score() returns (log-probs of prompt tokens 1..n-1).
        self.logprobs = logprobs or {}
        # (model, prompt ids, engine parameters) of every generate_stream call, in order.
        self.calls = []
        # The model version of each of those calls (None: Triton's choice).
        self.versions = []

    async def generate_stream(self, model, prompt_ids, params, span_name="", version=None):
        self.calls.append((model, list(prompt_ids), dict(params)))
        self.versions.append(version)
        # A script per version, keyed (model, version), takes precedence over the model's.
        for item in self.scripts.get((model, version), self.scripts.get(model, [])):
            if isinstance(item, Exception):
                raise item
            if isinstance(item, asyncio.Event):
                await item.wait()
                continue
            yield item

    async def score(self, model, prompt_ids, version=None):
        self.calls.append((model, list(prompt_ids), {"prompt_logprobs": True}))
        item = self.logprobs[model]
        if isinstance(item, Exception):
            raise item
        return item

    async def model_ready(self, name):
        return name in self.scripts

    async def close(self):
        pass
