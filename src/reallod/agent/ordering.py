"""Request ordering that helps a model server's prefix cache and costs nothing.

Tasks of one image (and of one object in it) share the long start of their prompts: the caption and
the category. Sent close together, a server with prefix caching (vLLM, SGLang) computes that prefix
once. Real-Data records already list an image's tasks together; a published task list need not, so
its tasks are regrouped inside a bounded window of the stream (memory stays bounded, results do not
change: each task is independent and is written under its own id).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

from reallod.agent.inputs import TaskItem
from reallod.agent.task import Task


def _group_key(item: TaskItem) -> tuple[str, str]:
    if isinstance(item, Task):
        return item.image_path, f"{item.chosen.category}|{item.chosen.bboxes}"
    return str(item.image_path or ""), ""


def group_by_image(items: Iterable[TaskItem], *, window: int = 4096) -> Iterator[TaskItem]:
    """The same items, those of one image (then one object) next to each other within each window of
    ``window`` items; images keep the order in which they first appear."""
    source = iter(items)
    while chunk := list(itertools.islice(source, window)):
        images: dict[str, dict[str, list[TaskItem]]] = {}
        for item in chunk:
            image, obj = _group_key(item)
            images.setdefault(image, {}).setdefault(obj, []).append(item)
        for objects in images.values():
            for group in objects.values():
                yield from group
