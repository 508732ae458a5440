"""Per image: which text source, which positive and negative expressions, the prompt and its loss labels.

The recipe: draw one text source per image (category 0.5, vlm_short 0.2, llm 0.2,
vlm_long 0.1 by default; sources the record lacks are renormalised away), take N positive
expressions per instance (default 1) and up to M negatives (default 50) while the prompt fits the
token budget (default 512), positives first, then shuffle the phrase order. The ``category`` source,
unless a record carries one explicitly, is the category names: one phrase per category present,
whose boxes are all the instances of that category, with negatives drawn from the other category
names of the dataset.

The prompt is ``[CLS] p0 . p1 . ... [SEP]``; each box's label is the index of its phrase in the
prompt, which is what transformers' Grounding-DINO loss expects (phrases are the token runs between
delimiter ids). Pure logic: the tokenizer is passed in as text → token ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from reallod.data.records import TRAINING_SOURCES
from reallod.errors import ConfigError
from reallod.model import token_prompt as P

DEFAULT_SOURCE_PROBS: dict[str, float] = {"category": 0.5, "vlm_short": 0.2, "llm": 0.2, "vlm_long": 0.1}
CATEGORY = "category"

Tokenize = Callable[[str], list[int]]


@dataclass
class Target:
    """One pair of a record after cleaning and augmentation: its boxes and its texts."""

    source: str
    boxes: np.ndarray  # (k, 4) xyxy pixels
    category: str
    relation: str
    positives: list[str]
    negatives: list[str]


@dataclass(frozen=True)
class TextOptions:
    source_probs: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_SOURCE_PROBS))
    positives_per_instance: int = 1
    max_negatives: int = 50
    max_text_len: int = 512
    relations: tuple[str, ...] = ("single", "multi")
    shuffle_phrases: bool = True

    def __post_init__(self) -> None:
        if any((not isinstance(p, int | float)) or p < 0 for p in self.source_probs.values()):
            raise ConfigError(f"data.source_probs: probabilities must be numbers >= 0, got {dict(self.source_probs)}")
        if not any(p > 0 for p in self.source_probs.values()):
            raise ConfigError("data.source_probs: at least one text source needs a probability above 0")
        if self.positives_per_instance < 1:
            raise ConfigError(f"data.positives_per_instance: must be >= 1, not {self.positives_per_instance}")
        if self.max_negatives < 0:
            raise ConfigError(f"data.max_negatives: must be >= 0, not {self.max_negatives}")
        if not 8 <= self.max_text_len <= P.MAX_TEXT_LEN:
            raise ConfigError(f"data.max_text_len (default: the model's): must be between 8 and {P.MAX_TEXT_LEN}, "
                              f"not {self.max_text_len}")
        bad = set(self.relations) - {"single", "multi"}
        if bad or not self.relations:
            raise ConfigError(f"data.relations: use single, multi or both, not {list(self.relations)}")


@dataclass
class TextSample:
    """The prompt of one training image and its targets."""

    source: str
    phrases: list[str]  # in prompt order
    positive: list[bool]  # per phrase: does it name a box of this image
    input_ids: list[int]
    spans: list[tuple[int, int]]  # per phrase: [start, end) token positions
    boxes: np.ndarray  # (n, 4) xyxy pixels
    class_labels: np.ndarray  # (n,) phrase index of each box


def check_source_names(source_probs: Mapping[str, float], data_sources: Iterable[str]) -> None:
    """Refuse a ``data.source_probs`` key that is neither a training source nor one the data has: a typo
    (``vlm-short``) would otherwise never be drawn, and its share silently go to the others."""
    known = {*TRAINING_SOURCES, *data_sources}
    unknown = sorted(set(source_probs) - known)
    if unknown:
        raise ConfigError(f"data.source_probs: unknown source {', '.join(unknown)}; the known sources are "
                          f"{', '.join(sorted(known))}")


def absent_sources(source_probs: Mapping[str, float], data_sources: Mapping[str, Iterable[str]]) -> str | None:
    """A warning naming the sources given a probability above 0 that no record of the data has (``data_sources``:
    file → the sources its records have; ``category``, a record's category names, is always there): each image
    draws among the sources it has, so their share would silently go to the others, or to the category names."""
    present = {s for sources in data_sources.values() for s in sources}
    used = {s: float(p) for s, p in source_probs.items() if p > 0}
    absent = {s: p for s, p in used.items() if s != CATEGORY and s not in present}
    if not absent:
        return None
    rest = [s for s in used if s not in absent]
    share = f"{'its' if len(absent) == 1 else 'their'} {sum(absent.values()) / sum(used.values()):.0%} of the draws"
    where = ("every image trains on its category names instead" if rest in ([], [CATEGORY]) else
             f"{share} go to {', '.join(rest)} (to the category names for a record that has none of those)")
    return (f"warning: data.source_probs gives {', '.join(f'{s} {p:g}' for s, p in absent.items())}, but no record "
            f"of {', '.join(map(str, data_sources))} has {'it' if len(absent) == 1 else 'them'}: {where}")


def _key(text: str) -> str:
    return P.sanitize(text).lower()


def _tokens(text: str, tokenize: Tokenize) -> list[int]:
    return [t for t in tokenize(P.sanitize(text)) if t not in P.DELIMITER_IDS]


def source_probabilities(targets: Sequence[Target], opts: TextOptions) -> dict[str, float]:
    """The configured probabilities over the sources this image can use, renormalised to sum to 1."""
    usable = set()
    for t in targets:
        if t.relation not in opts.relations or not len(t.boxes):
            continue
        if t.positives:
            usable.add(t.source)
        if t.category.strip():
            usable.add(CATEGORY)
    probs = {s: float(p) for s, p in opts.source_probs.items() if s in usable and p > 0}
    total = sum(probs.values())
    return {s: p / total for s, p in sorted(probs.items())} if total > 0 else {}


def draw_source(probs: Mapping[str, float], rng: np.random.Generator) -> str | None:
    if not probs:
        return None
    names = list(probs)
    return names[int(rng.choice(len(names), p=np.array([probs[n] for n in names])))]


def category_phrases(targets: Sequence[Target]) -> list[tuple[str, np.ndarray]]:
    """One phrase per category present: (name, every distinct box of that category)."""
    groups: dict[str, tuple[str, dict[tuple, np.ndarray]]] = {}
    for t in targets:
        if not t.category.strip() or not len(t.boxes):
            continue
        boxes = groups.setdefault(_key(t.category), (P.sanitize(t.category), {}))[1]
        for b in t.boxes:
            boxes.setdefault(tuple(np.round(b, 2)), b)
    return [(name, np.stack(list(boxes.values()))) for name, boxes in groups.values() if name]


def expression_phrases(targets: Sequence[Target], source: str, rng: np.random.Generator, opts: TextOptions
                       ) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
    """Positives (N per instance, same text merged into one phrase with all its boxes) and the negative pool."""
    merged: dict[str, tuple[str, list[np.ndarray]]] = {}
    negatives: dict[str, str] = {}
    for t in targets:
        if t.source != source or t.relation not in opts.relations or not len(t.boxes):
            continue
        if t.positives:
            n = min(opts.positives_per_instance, len(t.positives))
            for i in rng.choice(len(t.positives), size=n, replace=False):
                text = t.positives[int(i)]
                merged.setdefault(_key(text), (P.sanitize(text), []))[1].append(t.boxes)
        for text in t.negatives:
            negatives.setdefault(_key(text), P.sanitize(text))
    positives = [(text, np.concatenate(boxes)) for text, boxes in merged.values() if text]
    return positives, list(negatives.values())


def build_text_sample(targets: Sequence[Target], rng: np.random.Generator, tokenize: Tokenize, opts: TextOptions,
                      vocabulary: Sequence[str] = ()) -> TextSample:
    """Draw the source and the phrases of one image and lay them out in one prompt within the budget.

    ``vocabulary``: the dataset's category names, the negatives of the ``category`` source. Falls back
    to the category names when the drawn source yields no positive; an image with nothing usable gets
    a prompt of negatives only and no boxes.
    """
    source = draw_source(source_probabilities(targets, opts), rng) or CATEGORY
    explicit_category = any(t.source == CATEGORY for t in targets)
    if source == CATEGORY and not explicit_category:
        positives = category_phrases(targets)
        present = {_key(name) for name, _ in positives}
        negative_pool = [c for c in vocabulary if _key(c) and _key(c) not in present]
    else:
        positives, negative_pool = expression_phrases(targets, source, rng, opts)
        if not positives:
            source, positives = CATEGORY, category_phrases(targets)
            present = {_key(name) for name, _ in positives}
            negative_pool = [c for c in vocabulary if _key(c) and _key(c) not in present]
    # A text that names a box anywhere in the image must not be a negative.
    taken = {_key(p) for t in targets for p in [*t.positives, t.category]} | {_key(p) for p, _ in positives}

    budget = opts.max_text_len - 2  # [CLS] and [SEP]
    chosen: list[tuple[str, list[int], np.ndarray | None]] = []
    for i in rng.permutation(len(positives)):
        text, boxes = positives[int(i)]
        ids = _tokens(text, tokenize)[: opts.max_text_len - 3]
        if ids and len(ids) + 1 <= budget:
            chosen.append((text, ids, boxes))
            budget -= len(ids) + 1
    n_neg = 0
    for i in rng.permutation(len(negative_pool)) if opts.max_negatives else []:
        if n_neg >= opts.max_negatives or budget < 2:
            break
        text = negative_pool[int(i)]
        if _key(text) in taken:
            continue
        ids = _tokens(text, tokenize)
        if ids and len(ids) + 1 <= budget:
            chosen.append((text, ids, None))
            taken.add(_key(text))
            budget -= len(ids) + 1
            n_neg += 1
    order = rng.permutation(len(chosen)) if opts.shuffle_phrases else np.arange(len(chosen))
    return layout([chosen[int(i)] for i in order], source)


def layout(phrases: Sequence[tuple[str, list[int], np.ndarray | None]], source: str) -> TextSample:
    """``[CLS] p0 . p1 . [SEP]`` with spans, and each positive phrase's boxes labelled by its index."""
    ids = [P.CLS_ID]
    spans, boxes, labels = [], [], []
    for k, (_, toks, phrase_boxes) in enumerate(phrases):
        spans.append((len(ids), len(ids) + len(toks)))
        ids.extend(toks)
        ids.append(P.DOT_ID)
        if phrase_boxes is not None:
            boxes.append(phrase_boxes)
            labels.append(np.full(len(phrase_boxes), k, dtype=np.int64))
    ids.append(P.SEP_ID)
    return TextSample(
        source=source, phrases=[p[0] for p in phrases], positive=[p[2] is not None for p in phrases],
        input_ids=ids, spans=spans,
        boxes=np.concatenate(boxes).reshape(-1, 4) if boxes else np.zeros((0, 4)),
        class_labels=np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64))
