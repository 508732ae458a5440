"""Remembering the results of pure functions of images, by the image object itself.

Tasks of one object (Real-Data has about 30 expressions per instance, sent together) ask the VLM
about the same views of the same decoded image: cutting, encoding and hashing a view once
instead of once per task saves milliseconds of CPU per request. Entries are keyed by the object's
identity and hold a reference to it, so an id is never reused while its entry lives; the image
loader's own cache makes the same file the same object.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class IdentityMemo:
    """A small thread-safe LRU of ``make()`` results keyed by (the object, an extra key)."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[int, Hashable], tuple[Any, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def has(self, obj: Any, extra: Hashable) -> bool:
        entry = self._entries.get((id(obj), extra))
        return entry is not None and entry[0] is obj

    async def get_off_loop(self, obj: Any, extra: Hashable, make: Callable[[], T]) -> T:
        """From memory on the event loop; made in a worker thread only when new (a thread hop costs
        more CPU than a lookup, and most calls are for a view another task already made)."""
        if self.has(obj, extra):
            return self.get(obj, extra, make)
        return await asyncio.to_thread(self.get, obj, extra, make)

    def get(self, obj: Any, extra: Hashable, make: Callable[[], T]) -> T:
        key = (id(obj), extra)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] is obj:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[1]
        value = make()
        with self._lock:
            self._entries[key] = (obj, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return value
