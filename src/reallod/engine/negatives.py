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
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

from reallod.data.words import words
from reallod.engine.text import find_category, fold, mentions, word_spans


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
    """``text`` with its first mention of ``category`` (singular or plural, found as :func:`mentions`
    finds it, in any script) replaced by ``other``; ``other`` alone when ``text`` names no ``category``."""
    spans = word_spans(text)
    at = find_category(spans[1], category) if spans else None
    if spans is None or at is None:
        return other
    base, _, where = spans
    start, end = where[at[0]][0], where[at[1] - 1][1]
    lead, tail = _edges(category)  # what the category holds around its words goes too
    if lead and base[:start].casefold().endswith(lead):
        start -= len(lead)
    if tail and base[end:end + len(tail)].casefold() == tail:
        end += len(tail)
    return base[:start] + other + base[end:]


@lru_cache(maxsize=1 << 16)
def _edges(category: str) -> tuple[str, str]:
    """(what ``category`` holds before its first word, after its last): ("", ")") for "bow (weapon)"."""
    cat = unicodedata.normalize("NFC", category).strip().casefold()
    spans = word_spans(cat)
    if not spans or not spans[2]:
        return "", ""
    return cat[:spans[2][0][0]], cat[spans[2][-1][1]:]


_ARTICLES = frozenset({"a", "an", "the"})


def fits_image(negative: str, image_positives: set[str], present: Iterable[str]) -> bool:
    """Whether a would-be negative describes something in the image (then it is dropped): a positive
    of the image, or only a category present there ("dogs", "the people" when a person is there)."""
    if fold(negative) in image_positives:
        return True
    found = words(negative)
    if found[:1] and found[0] in _ARTICLES:
        found = found[1:]
    return any(find_category(found, c) == (0, len(found)) for c in present)


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
