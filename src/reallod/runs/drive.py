"""Keeping many items in flight: the one concurrency loop of every run (re-alignment tasks, the data
engine's images).

At most ``concurrency`` items run at once and new ones start as old ones finish, so a run over
millions of items holds only the items in flight, never the whole input or all results.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from reallod.errors import ConfigError
from reallod.llm.cache import new_scope


async def drive(items: Iterable[Any], work: Callable[[Any], Awaitable[Any]],
                handle: Callable[[Any, Any, float], Awaitable[None]], *, concurrency: int) -> int:
    """Keep ``concurrency`` items in flight, each run by ``work`` (one re-alignment task, or one
    image's generation in the data engine); each hands its result to ``handle`` itself (so results
    finishing together are journaled in one group commit). The first run-level error cancels the
    items in flight and is raised."""
    if concurrency < 1:
        raise ConfigError("concurrency must be at least 1")
    source = iter(items)
    pending: set[asyncio.Task[None]] = set()
    finished: asyncio.Queue[asyncio.Task[None]] = asyncio.Queue()  # each task posts itself when done:
    done_count = 0  # unlike asyncio.wait, no pass over all tasks in flight for every one that ends

    async def one(item: Any) -> None:
        new_scope()  # the response cache counts repeated requests per task
        started = time.perf_counter()
        result = await work(item)
        await handle(item, result, time.perf_counter() - started)

    def start_more() -> None:
        for item in itertools.islice(source, concurrency - len(pending)):
            task = asyncio.create_task(one(item))
            task.add_done_callback(finished.put_nowait)
            pending.add(task)

    try:
        start_more()
        while pending:
            fut = await finished.get()
            pending.discard(fut)
            fut.result()  # a run-level error stops here
            done_count += 1
            if finished.empty():  # refill once per wake-up, not once per finished task
                start_more()
    finally:
        for fut in pending:
            fut.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    return done_count
