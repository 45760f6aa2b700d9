"""Waiting for what a cancelled call leaves behind, before asserting on the logs."""

import asyncio
import gc


async def settle_after_cancel() -> None:
    """The server notices a cancellation and closes the handler asynchronously; a generator left
    suspended is closed by the event loop's finaliser once it is collected, which then runs on
    the loop. One collection: in the whole suite's process one takes seconds (ten per test were
    most of three minutes of `make test`)."""
    await asyncio.sleep(0.5)
    gc.collect()
    await asyncio.sleep(0.25)
