"""Work done ahead in worker threads and handed back in input order, so the device never waits for the
host to decode and resize the next image."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
R = TypeVar("R")


def depth(prefetch: int | None, device: torch.device) -> int:
    """How many images to prepare ahead: as asked, else 2 on a GPU and none on the CPU (there the threads
    would only take cores from the model's own)."""
    if prefetch is not None:
        return max(0, prefetch)
    return 2 if device.type == "cuda" else 0


def ahead(fn: Callable[[T], R], items: Iterable[T], n: int, *, name: str = "prefetch") -> Iterator[R]:
    """``fn(item)`` for every item, in order, with up to ``n`` items computed ahead in threads while the
    caller works on the current one (``n=0``: each in turn, in the caller's thread).

    An exception of ``fn`` is raised where its item is reached. Close the iterator (``contextlib.closing``)
    to stop early: what is in flight is cancelled or awaited, so no thread outlives it.
    """
    if n <= 0:
        for item in items:
            yield fn(item)
        return
    todo = iter(items)
    pool = ThreadPoolExecutor(max_workers=min(n, 4), thread_name_prefix=name)
    flight: deque[Future[R]] = deque(pool.submit(fn, item) for item in islice(todo, n))
    try:
        while flight:
            done = flight.popleft()
            for item in todo:  # one in, one out: n stay in flight while the caller works
                flight.append(pool.submit(fn, item))
                break
            yield done.result()
    finally:
        for f in flight:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
