"""Blocking work that Ctrl-C must not wait for: one daemon thread per call.

``asyncio.to_thread`` runs work in the loop's default executor, and ``asyncio.run`` waits for that
executor's threads when it ends (the interpreter joins them again at exit). For short work (an image
header, a journal write) that is right; for long work (loading an in-process model takes a minute on
a small CPU, generating takes seconds) it means an interrupted run stays alive until the work is done.
:func:`in_daemon_thread` runs the work in its own daemon thread instead: a cancelled caller returns at
once, and the process may exit while the thread is still busy (its result is then dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

THREAD_PREFIX = "reallod-worker"


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled (Ctrl-C, a timeout): nobody wants the result
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


async def in_daemon_thread(fn: Callable[..., T], /, *args: Any) -> T:
    """``fn(*args)`` in a new daemon thread (with the caller's context variables); cancelling the
    caller does not wait for it."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    ctx = contextvars.copy_context()

    def target() -> None:
        result, error = None, None
        try:
            result = ctx.run(fn, *args)
        except BaseException as e:  # handed to the caller, who decides
            error = e
        with contextlib.suppress(RuntimeError):  # a closed loop: the run ended (interrupted) meanwhile
            loop.call_soon_threadsafe(_settle, future, result, error)

    threading.Thread(target=target, name=f"{THREAD_PREFIX}:{getattr(fn, '__name__', 'work')}", daemon=True).start()
    return await future
