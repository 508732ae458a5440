"""Real-Data records made fit for training: lenient cleaning, and the per-pair targets of one image.

Training is lenient where validation is strict: a box past the image is clamped, a box with no area
(or NaN) drops its pair (a group expression is wrong without all of its boxes), empty expressions
are dropped, and a negative equal to one of the pair's positives is removed. Only lines that
cannot be read as a record at all are skipped, with the reason counted.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from reallod.data.images import resolve_image
from reallod.data.records import Pair, Record
from reallod.data.schema import check_record, plain_json, plain_key, text_key, visible
from reallod.train.sampling import Target

# Problems that make a line unusable as a record; the others are repaired by :func:`clean_record`.
FATAL_KINDS = frozenset({"bad_json", "bad_utf8", "bom", "not_object", "missing_field", "wrong_type", "bad_size",
                         "bad_box"})


def _clean_pair(pair: Pair, width: int, height: int, plain: bool) -> Pair | None:
    boxes = []
    for box in pair.bboxes:
        if len(box) != 4 or not all(math.isfinite(v) for v in box):
            return None
        x1, y1, x2, y2 = (min(max(v, 0.0), lim) for v, lim in zip(box, (width, height, width, height), strict=True))
        if x2 - x1 < 1 or y2 - y1 < 1:
            return None
        boxes.append([x1, y1, x2, y2])
    if not boxes:
        return None
    # an expression the tokenizer gives no token is no phrase; a negative is never one of the positives
    # (compared as every command compares expressions: case, spacing and Unicode form aside)
    usable, key = (str.strip, plain_key) if plain else (visible, text_key)  # plain: see plain_json
    positives = [e.strip() for e in pair.positive_expressions if isinstance(e, str) and usable(e)]
    pos_keys = set(map(key, positives))
    negatives = [e.strip() for e in pair.negative_expressions
                 if isinstance(e, str) and usable(e) and key(e) not in pos_keys]
    relation = pair.relation if pair.relation in ("single", "multi") else ("multi" if len(boxes) > 1 else "single")
    category = pair.category.strip() if isinstance(pair.category, str) else ""
    return Pair(boxes, category, relation, positives, negatives)


def clean_record(obj: Any, line: bytes | None = None) -> tuple[Record | None, str | None]:
    """(record, None) for a usable line, else (None, the reason: a problem kind or ``no_usable_box``).
    ``line``: the JSON text ``obj`` was read from, which makes the work on its expressions lighter."""
    plain = line is not None and plain_json(line)
    problems = check_record(obj, line)
    fatal = [p for p in problems if p.kind in FATAL_KINDS]
    if fatal:
        return None, fatal[0].kind
    try:
        record = Record.from_dict(obj)
    except (KeyError, TypeError, ValueError):
        return None, "wrong_type"
    if resolve_image(".", record.filename) is None:  # never read an image outside --images
        return None, "image_outside_root"
    pairs: dict[str, list[Pair]] = {}
    for source, items in record.pairs.items():
        kept = [p for p in (_clean_pair(pair, record.width, record.height, plain) for pair in items) if p is not None]
        if kept:
            pairs[source] = kept
    if not pairs:
        return None, "no_usable_box"
    record.pairs = pairs
    return record, None


def record_targets(record: Record) -> list[Target]:
    """Every pair of the record as a :class:`Target` (boxes as an array), in record order."""
    return [Target(source, np.asarray(p.bboxes, dtype=np.float64).reshape(-1, 4), p.category, p.relation,
                   list(p.positive_expressions), list(p.negative_expressions))
            for source, _, p in record.iter_pairs()]


def all_boxes(targets: list[Target]) -> tuple[np.ndarray, np.ndarray]:
    """All boxes stacked, and for each the index of its target."""
    if not targets:
        return np.zeros((0, 4)), np.zeros(0, dtype=np.int64)
    boxes = np.concatenate([t.boxes for t in targets])
    owner = np.concatenate([np.full(len(t.boxes), i, dtype=np.int64) for i, t in enumerate(targets)])
    return boxes, owner


def apply_geometry(targets: list[Target], boxes: np.ndarray, owner: np.ndarray, keep: np.ndarray,
                   flipped: bool, swap_words: bool) -> list[Target]:
    """Targets after augmentation: new boxes; a pair loses nothing or is dropped; left/right swapped on a flip."""
    from reallod.train.augment import swap_left_right

    kept_owner = owner[keep]
    out = []
    for i, t in enumerate(targets):
        mine = np.flatnonzero(kept_owner == i)
        if len(mine) != len(t.boxes):
            continue  # a box of this pair was cropped away: its expressions no longer hold
        texts = (lambda xs: [swap_left_right(x) for x in xs]) if flipped and swap_words else list
        category = swap_left_right(t.category) if flipped and swap_words else t.category
        out.append(Target(t.source, boxes[mine], category, t.relation, texts(t.positives), texts(t.negatives)))
    return out
