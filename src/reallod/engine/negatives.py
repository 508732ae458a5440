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

from reallod.data.words import words
from reallod.engine.text import (
    category_display,
    find_category,
    find_name,
    fold,
    mentions,
    plural_display,
    word_spans,
)


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
    input gives the same data; different objects get different picks). The templates are the
    positives that name ``category`` (by any of its names); without one, its display name."""
    if count <= 0 or not absent:
        return []
    picks = sorted(absent, key=lambda c: _rank(key, c))[:count]
    templates = [p for p in positives if mentions(p, category)] or [category_display(category)]
    out = []
    for i, other in enumerate(picks):
        template = templates[i % len(templates)]
        out.append(replace_category(template, category, other))
    return out


def replace_category(text: str, category: str, other: str) -> str:
    """``text`` with its first mention of ``category`` (by any of its names, singular or plural, in
    any script: :func:`find_name`) replaced by ``other``'s display name; that alone when ``text``
    names no ``category``. The name inserted follows the mention: plural for a plural one ("both
    masts" → "both spoons"), lower case for a lower-case one ("the glove" → "the bowl", not
    "the Bowl" of ``Bowl/Basin``); a copied qualifier goes with the mention ("the bow (weapon)")."""
    name = category_display(other)
    spans = word_spans(text)
    at = find_name(spans[1], category) if spans else None
    if spans is None or at is None:
        return name
    base, found, where = spans
    first, past, match = at
    start, end = where[first][0], where[past - 1][1]
    if match.qualified and (close := re.match(r"\s*\)", base[end:])):
        end += close.end()
    if found[first + match.last] != match.singular:
        name = plural_display(name)
    if base[start:end] == base[start:end].casefold():
        name = _lower_titles(name)
    return base[:start] + name + base[end:]


def _lower_titles(name: str) -> str:
    """``name`` with its capitalised words in lower case ("Street Light" → street light; "SUV" stays)."""
    return " ".join(w.lower() if w[:1].isupper() and w[1:] == w[1:].lower() else w for w in name.split(" "))


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
