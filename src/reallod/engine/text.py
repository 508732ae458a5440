"""Cleaning generated expressions (pure): what a model wrote → a usable phrase, or why not.

Malformed generations are dropped with a reason that the run counts: empty, overlong, a copy of the
prompt (box coordinates, no words), about another object (names another category of the image and
not its own), or a duplicate. A category is named as a phrase names it (:func:`category_names`):
"the glass" names LVIS ``glass (drink container)``, "the glove" Objects365 ``Gloves``.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from functools import cache, lru_cache
from typing import Any, NamedTuple

from reallod.data.words import words
from reallod.engine.phrases import clean

_ECHO = re.compile(r"\[\s*-?\d*\.?\d+\s*,|\(\s*-?\d*\.?\d+\s*,\s*-?\d*\.?\d+\s*,")  # [x1, ... or (x1, y1, ...


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


# plurals whose singular names another thing ("glasses" → glass, "shorts" → short) or is no word
# for the object ("data" → datum): never singularised
_NOT_SINGULAR = frozenset({
    "glasses", "eyeglasses", "sunglasses", "spectacles", "goggles", "binoculars", "scissors", "pliers", "tongs",
    "tweezers", "trousers", "pants", "jeans", "shorts", "tights", "leggings", "pajamas", "pyjamas", "overalls",
    "clothes", "data", "media", "news", "series", "species"})


@lru_cache(maxsize=1 << 16)
def singular(word: str) -> str:
    """A casefolded English plural in singular ("gloves" → glove, "people" → person); any other
    word unchanged. Words ending in -us/-is/-ss, or in -s where inflect makes the plural -ses ("bus"
    → buses), are singular: inflect's singular_noun cuts their s ("bus" → "bu"). Non-Latin words
    are left alone."""
    if word in _NOT_SINGULAR or not word or not all(unicodedata.name(ch, "").startswith("LATIN") for ch in word):
        return word
    modern = _plural_engines()[0]
    one = modern.singular_noun(word)
    if not one or one == word or word.endswith(("us", "is", "ss")):
        return word
    if word.endswith("s") and modern.plural_noun(word) == word + "es":
        return word
    return one


class Name(NamedTuple):
    """One way a text may name a category: the words a mention may have, one set per word."""

    slots: tuple[frozenset[str], ...]
    last: int  # the slot that takes the plural
    singular: str  # its word in singular: another word there makes the mention plural
    qualified: bool  # holds the category's qualifier ("glass (drink container)")


_QUALIFIER = re.compile(r"(.*?)\s*\(([^()]*)\)\s*")


@lru_cache(maxsize=1 << 16)
def category_parts(category: str) -> tuple[tuple[str, ...], str]:
    """(the names ``category`` gives, as written, first one first; its qualifier, "" when none).

    Datasets name a category as LVIS ``glass_(drink_container)`` (a qualifier in parentheses that
    nobody writes in a phrase) or Objects365 ``Cabinet/shelf`` (alternatives, any of which names it;
    ``Cutting/chopping Board``: the last one's tail is shared). Underscores are spaces."""
    text = " ".join(unicodedata.normalize("NFC", category).replace("_", " ").split())
    m = _QUALIFIER.fullmatch(text)
    base, qualifier = (m[1], m[2].strip()) if m and words(m[1]) and words(m[2]) else (text, "")
    parts = [" ".join(p.split()) for p in base.split("/") if words(p)]
    if not parts:
        return (text,), ""
    if len(parts) > 1 and all(len(p.split()) == 1 for p in parts[:-1]) and len(parts[-1].split()) > 1:
        tail = parts[-1].split(maxsplit=1)[1]
        parts = [f"{p} {tail}" for p in parts[:-1]] + parts[-1:]
    return tuple(parts), qualifier


def _without_other(name: str) -> str:
    """``name`` without a leading "other" (Objects365 ``Other Shoes``: phrases say "the shoe")."""
    first, _, rest = name.partition(" ")
    return rest if first.casefold() == "other" and words(rest) else name


@lru_cache(maxsize=1 << 16)
def category_names(category: str) -> tuple[Name, ...]:
    """Every way a text may name ``category``, the longest first: each of its names (see
    :func:`category_parts`), with and without its qualifier, its last word in singular or any plural
    ("Gloves": glove, gloves; "glass (drink container)": glass(es), glass(es) drink container).
    Cached: a dataset has a few thousand categories."""
    alts, qualifier = category_parts(category)
    tail = tuple(frozenset({w}) for w in words(qualifier))
    found: dict[tuple[frozenset[str], ...], Name] = {}
    for alt in alts:
        for variant in dict.fromkeys((tuple(words(alt)), tuple(words(_without_other(alt))))):
            if not variant:
                continue
            one = singular(variant[-1])
            slots = (*(frozenset({w}) for w in variant[:-1]), word_forms(one) | {variant[-1]})
            found.setdefault(slots, Name(slots, len(slots) - 1, one, False))
            if tail:
                found.setdefault(slots + tail, Name(slots + tail, len(slots) - 1, one, True))
    return tuple(sorted(found.values(), key=lambda n: -len(n.slots)))


def _as_written(word: str, new: str) -> str:
    """``new`` (casefolded) in the case of ``word``: "Gloves" → "Glove", "SUVS" → "SUV"."""
    if len(word) > 1 and word.isupper():
        return new.upper()
    return new[:1].upper() + new[1:] if word[:1].isupper() else new


def _with_last_word(name: str, change: Callable[[str], str]) -> str:
    """``name`` with its last word (as :func:`words` finds it) changed by ``change``."""
    spans = word_spans(name)
    if not spans or not spans[1]:
        return name
    base, _, where = spans
    start, end = where[-1]
    return base[:start] + change(base[start:end]) + base[end:]


@lru_cache(maxsize=1 << 16)
def category_display(category: str) -> str:
    """What a prompt calls ``category`` and what an easy negative writes for it: its first name, no
    qualifier, no leading "other", its last word in singular, in the dataset's case ("glass (drink
    container)" → glass, "Cabinet/shelf" → Cabinet, "Street Lights" → Street Light, "Other Shoes" →
    Shoe). An object is one thing: "the Gloves at [...]" asks for phrases about a pair."""
    name = _without_other(category_parts(category)[0][0])
    return _with_last_word(name, lambda w: _as_written(w, singular(w.casefold())))


@lru_cache(maxsize=1 << 16)
def category_hint(category: str) -> str:
    """The sense of :func:`category_display` where the dataset's name gives one, as a sentence for a
    prompt ('By "bow" this dataset means weapon.'), "" where it gives none. The qualifier tells
    "bow (weapon)" from "bow (decorative ribbon)"; alternatives say what else the name covers."""
    alts, qualifier = category_parts(category)
    if qualifier:
        sense = qualifier + (f", also called {' or '.join(alts[1:])}" if len(alts) > 1 else "")
    elif len(alts) > 1:
        sense = " or ".join(alts)
    else:
        return ""
    return f'By "{category_display(category)}" this dataset means {sense}.'


def plural_display(name: str) -> str:
    """``name`` (a display name) with its last word in plural ("Spoon" → Spoons); unchanged where it
    is not Latin or names a plural thing already ("glasses")."""
    def plural(word: str) -> str:
        low = word.casefold()
        if low in _NOT_SINGULAR or not all(unicodedata.name(ch, "").startswith("LATIN") for ch in low):
            return word
        return _as_written(word, _plural_engines()[0].plural_noun(low))
    return _with_last_word(name, plural)


def find_name(found: list[str], category: str) -> tuple[int, int, Name] | None:
    """The first place where the words ``found`` (of a text) name ``category`` in one of its
    :func:`category_names` (the longest one there), as (first word, past the last word, the name)."""
    names = category_names(category)
    for i in range(len(found)):
        for name in names:
            n = len(name.slots)
            if i + n <= len(found) and all(found[i + k] in slot for k, slot in enumerate(name.slots)):
                return i, i + n, name
    return None


def find_category(found: list[str], category: str) -> tuple[int, int] | None:
    """Where the words ``found`` (of a text) name ``category`` (see :func:`find_name`), as (first
    word, past the last word), or None."""
    at = find_name(found, category)
    return None if at is None else at[:2]


def mentions(text: str, category: str) -> bool:
    """Whether ``text`` names ``category`` by any of its names, singular or plural."""
    return find_category(words(text), category) is not None


@lru_cache(maxsize=1 << 16)
def _qualifier_pattern(category: str) -> re.Pattern[str] | None:
    qualifier = category_parts(category)[1]
    if not qualifier:
        return None
    inside = r"[\s_]+".join(re.escape(w) for w in qualifier.split())
    return re.compile(rf"[\s_]*\(\s*{inside}\s*\)", re.IGNORECASE)


def drop_qualifiers(text: str, categories: Iterable[str]) -> str:
    """``text`` without the bracketed qualifier of any of ``categories`` that a model copied from a
    prompt: "the glass (drink container) on the left" → "the glass on the left". Nobody writes it."""
    for category in categories:
        pattern = _qualifier_pattern(category)
        if pattern is not None:
            text = pattern.sub("", text)
    return text.strip()


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
    """The usable, new phrases among ``candidates`` (``seen`` grows; drops are counted per step), a
    category's qualifier copied from the prompt taken out (:func:`drop_qualifiers`)."""
    others = list(others)
    out: list[str] = []
    for raw in candidates:
        text = drop_qualifiers(clean(raw), [category, *others]) if isinstance(raw, str) else ""
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
