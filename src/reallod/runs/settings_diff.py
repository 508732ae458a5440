"""Which of a run's settings differ from those an earlier run's journal was written with, so that a refused or
redone resume can name the options the user changed (``reallod detect``'s and ``reallod eval``'s)."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from typing import Any, NamedTuple


class Change(NamedTuple):
    key: str  # dotted where the setting is one of a group's: ``inference.topk``
    was: Any  # None: the earlier settings had no such value
    now: Any


def diff_settings(old: Mapping[str, Any], new: Mapping[str, Any], groups: Collection[str] | None = None
                  ) -> list[Change]:
    """The settings whose values differ, ``new``'s first, then those only ``old`` has (a group's in its place).
    A group (a dotted key of ``groups``; None: every one) that is a dict is compared setting by setting, as
    ``inference.topk``; where one side's is no dict, or an empty one, that value stands under the group's key."""
    return list(_diff(old, new, "", groups))


def _group(value: Any, key: str, groups: Collection[str] | None) -> bool:
    return isinstance(value, dict) and bool(value) and (groups is None or key in groups)


def _diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str, groups: Collection[str] | None
          ) -> Iterator[Change]:
    for name in [*new, *(k for k in old if k not in new)]:
        key, was, now = prefix + name, old.get(name), new.get(name)
        was_group, now_group = _group(was, key, groups), _group(now, key, groups)
        if was_group or now_group:
            yield from _diff(was if was_group else {}, now if now_group else {}, f"{key}.", groups)
            was, now = None if was_group else was, None if now_group else now
        if was != now:
            yield Change(key, was, now)
