"""Blocking work in a daemon thread: its result or error comes back; a cancelled caller does not wait."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time

import pytest

from reallod.llm.threads import in_daemon_thread

WHO = contextvars.ContextVar("WHO", default="nobody")


def test_result_error_and_context_come_back():
    def work(x):
        return x * 2, WHO.get(), threading.current_thread().daemon

    def fail():
        raise ValueError("broken")

    async def main():
        WHO.set("the task")
        assert await in_daemon_thread(work, 21) == (42, "the task", True)
        with pytest.raises(ValueError, match="broken"):
            await in_daemon_thread(fail)

    asyncio.run(main())


def test_a_cancelled_run_ends_at_once_while_the_work_goes_on():
    """What Ctrl-C needs while a model loads: asyncio.to_thread would hold asyncio.run for the whole load."""
    release = threading.Event()

    def slow_load():
        release.wait(30)
        return "loaded"

    async def main():
        task = asyncio.create_task(in_daemon_thread(slow_load))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    started = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - started < 5  # the slow load (up to 30 s) is not waited for
    release.set()  # the thread finishes later; its loop is gone and the result is dropped quietly
