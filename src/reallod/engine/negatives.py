"""Negatives (pure parts): easy ones from absent categories, and the rule that drops a "negative"
that in fact fits something in the image.

Hard negatives are written by the LLM (one attribute, relation or position of a positive changed);
easy negatives name a category of the dataset that is absent from the image, taking the form of a
positive where it names its category ("the cat on the left" → "the zebra on the left"). A
negative equal to any positive of any object of the image, or naming a category present in the
image without anything else ("dog" when a dog is there), is not a negative for this image.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from reallod.engine.text import fold, mentions


def absent_categories(vocabulary: Iterable[str], present: Iterable[str]) -> list[str]:
    here = {fold(c) for c in present}
    seen: set[str] = set()
    out = []
    for c in vocabulary:
        k = fold(c)
        if k not in here and k not in seen:
            seen.add(k)
            out.append(c)
    return out


def _rank(key: str, item: str) -> str:
    return hashlib.sha1(f"{key}\x00{item}".encode()).hexdigest()


def easy_negatives(positives: list[str], category: str, absent: list[str], count: int, *, key: str) -> list[str]:
    """``count`` expressions about absent categories, chosen deterministically per ``key`` (the same
    input gives the same data; different objects get different picks)."""
    if count <= 0 or not absent:
        return []
    picks = sorted(absent, key=lambda c: _rank(key, c))[:count]
    templates = [p for p in positives if mentions(p, category)] or [category]
    out = []
    for i, other in enumerate(picks):
        template = templates[i % len(templates)]
        out.append(replace_category(template, category, other))
    return out


def replace_category(text: str, category: str, other: str) -> str:
    """``text`` with its mention of ``category`` (singular or plural) replaced by ``other``."""
    words = category.split()
    head = r"\s+".join(re.escape(w) for w in words[:-1])
    last = re.escape(words[-1]) + r"(?:e?s)?" if words else ""
    sep = r"\s+" if head else ""
    pattern = rf"(?<!\w){head}{sep}{last}(?!\w)"  # not \b: "bow (weapon)" ends with no word character
    new, n = re.subn(pattern, lambda _: other, text, count=1, flags=re.I)  # ``other`` is text, not a template
    return new if n else other


def fits_image(negative: str, image_positives: set[str], present: Iterable[str]) -> bool:
    """Whether a would-be negative describes something in the image (then it is dropped)."""
    key = fold(negative)
    if key in image_positives:
        return True
    return any(key in (fold(c), fold(c) + "s", "the " + fold(c), "a " + fold(c)) for c in present)


def keep_negatives(candidates: Iterable[str], image_positives: set[str], present: list[str],
                   seen: set[str]) -> tuple[list[str], int]:
    """(the true negatives among ``candidates``, how many fit the image and were dropped)."""
    out, dropped = [], 0
    for text in candidates:
        if fits_image(text, image_positives, present):
            dropped += 1
            continue
        if fold(text) in seen:
            continue
        seen.add(fold(text))
        out.append(text)
    return out, dropped
