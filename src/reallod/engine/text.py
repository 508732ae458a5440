"""Cleaning generated expressions (pure): what a model wrote → a usable phrase, or why not.

Malformed generations are dropped with a reason that the run counts: empty, overlong, a copy of the
prompt (box coordinates, no words), about another object (names another category of the image and
not its own), or a duplicate.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from reallod.data.words import words

_LEAD = re.compile(r"^\s*(?:[-*•]+\s*|\d+[.)]\s*)?(?:(?:expression|phrase|answer)[\s_]*\d*\s*:)?\s*", re.I)
_ECHO = re.compile(r"\[\s*-?\d*\.?\d+\s*,")
_QUOTES = "\"'`“”‘’"


def fold(text: str) -> str:
    """The comparison key of an expression: whitespace and case do not make a new one."""
    return " ".join(text.split()).casefold().rstrip(".!")


def clean(text: str) -> str:
    """One phrase as a model may write it (bullets, quotes, trailing full stop) → the phrase."""
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    line = _LEAD.sub("", line).strip().strip(_QUOTES).strip()
    return " ".join(line.split()).rstrip(".").strip()


def mentions(text: str, category: str) -> bool:
    """Whether ``text`` names ``category`` (its words in order, a plural 's'/'es' allowed)."""
    found, cat = words(text), words(category)
    if not cat:
        return False
    for i in range(len(found) - len(cat) + 1):
        window = found[i:i + len(cat)]
        if window[:-1] == cat[:-1] and window[-1] in (cat[-1], cat[-1] + "s", cat[-1] + "es"):
            return True
    return False


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
    if not mentions(text, category) and any(mentions(text, o) for o in others if fold(o) != fold(category)):
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
