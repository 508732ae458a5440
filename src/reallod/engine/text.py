"""Cleaning generated expressions (pure): what a model wrote → a usable phrase, or why not.

Malformed generations are dropped with a reason that the run counts: empty, overlong, a copy of the
prompt (box coordinates, no words), about another object (names another category of the image and
not its own), or a duplicate.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from functools import cache, lru_cache
from typing import Any

from reallod.data.words import words
from reallod.engine.phrases import clean

_ECHO = re.compile(r"\[\s*-?\d*\.?\d+\s*,")


def fold(text: str) -> str:
    """The comparison key of an expression: whitespace and case do not make a new one."""
    return " ".join(text.split()).casefold().rstrip(".!")


@cache
def _plural_engines() -> tuple[Any, Any]:
    """inflect's modern and classical engines, imported on first use (the import takes a second)."""
    import inflect

    classical = inflect.engine()
    classical.classical(all=True)
    return inflect.engine(), classical


@lru_cache(maxsize=1 << 16)
def word_forms(word: str) -> frozenset[str]:
    """A (casefolded) word and its English plurals: "knife" → knives, "person" → people/persons,
    "sheep" → sheep. Only words of Latin letters are inflected; a plural category ("glasses") gets
    a form that no text holds, which is harmless. Cached: a dataset has a few thousand categories."""
    if not all(unicodedata.name(ch, "").startswith("LATIN") for ch in word):
        return frozenset({word})
    return frozenset({word, *(e.plural_noun(word) for e in _plural_engines())})


@lru_cache(maxsize=1 << 16)
def category_words(category: str) -> tuple[tuple[str, ...], frozenset[str]]:
    """(the words of ``category`` before its last, the forms of its last word); empty: no words."""
    cat = words(category)
    return (tuple(cat[:-1]), word_forms(cat[-1])) if cat else ((), frozenset())


def find_category(found: list[str], category: str) -> tuple[int, int] | None:
    """Where the words ``found`` (of a text) name ``category`` — its words in order, the last in
    singular or plural — as (first word, past the last word), or None."""
    head, last = category_words(category)
    if not last:
        return None
    n = len(head) + 1
    for i in range(len(found) - n + 1):
        if found[i + n - 1] in last and tuple(found[i:i + n - 1]) == head:
            return i, i + n
    return None


def mentions(text: str, category: str) -> bool:
    """Whether ``text`` names ``category`` (its words in order, the last one singular or plural)."""
    return find_category(words(text), category) is not None


def word_spans(text: str) -> tuple[str, list[str], list[tuple[int, int]]] | None:
    """(``text`` NFC-normalised, its :func:`words`, where each word lies in it): what replacing a
    word needs, in any script. None in the rare case where casefolding shifts the characters so
    that a word cannot be found again."""
    base = unicodedata.normalize("NFC", text)
    folded = [ch.casefold() for ch in base]  # "ß" → "ss": one character may fold to several
    low = "".join(folded)
    owner = [i for i, f in enumerate(folded) for _ in f]  # character of ``low`` → character of ``base``
    found, spans, at = words(base), [], 0
    for w in found:
        start = low.find(w, at)
        if start < 0:
            return None
        at = start + len(w)
        spans.append((owner[start], owner[at - 1] + 1))
    return base, found, spans


def check(text: str, category: str, others: Iterable[str], *, max_words: int) -> str | None:
    """Why a cleaned phrase is unusable for an object of ``category`` (None: usable).

    ``others`` are the categories of the image's other objects: a phrase that names one of them and
    not its own object's category describes the wrong object."""
    if not text:
        return "empty"
    if len(text.split()) > max_words:
        return "overlong"
    if _ECHO.search(text) or not re.search(r"[^\W\d_]", text):
        return "copies the prompt"  # box coordinates, or no words at all
    found = words(text)
    if find_category(found, category) is None and any(
            find_category(found, o) is not None for o in others if fold(o) != fold(category)):
        return "wrong object"
    return None


def accept(candidates: Iterable[str], category: str, others: Iterable[str], *, max_words: int,
           seen: set[str], counts: Counter[str], step: str, limit: int | None = None) -> list[str]:
    """The usable, new phrases among ``candidates`` (``seen`` grows; drops are counted per step)."""
    others = list(others)
    out: list[str] = []
    for raw in candidates:
        text = clean(raw) if isinstance(raw, str) else ""
        why = check(text, category, others, max_words=max_words)
        if why is None and fold(text) in seen:
            why = "duplicate"
        if why is not None:
            counts[f"{step}: {why}:dropped"] += 1
            continue
        if limit is not None and len(out) >= limit:
            counts[f"{step}: over the count:dropped"] += 1
            continue
        seen.add(fold(text))
        out.append(text)
    return out
