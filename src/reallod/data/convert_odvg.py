"""Real-Data → ODVG grounding jsonl, the format MM-Grounding-DINO (mmdet ``ODVGDataset``) trains on.

One output line is ``{"filename", "height", "width", "grounding": {"caption", "regions": [{"bbox",
"phrase", "tokens_positive"}]}}``: the caption is the chosen positive expressions followed by the
negative expressions, joined as ``"a. b. c."``; each positive is a region whose ``tokens_positive``
are the character spans of its phrase in the caption and whose ``bbox`` is the pair's box (xyxy
pixels; a list of boxes for a group). Negatives are in the caption with no region, which is how a
grounding model learns that they match nothing.

By default one line is written per image × source, with a ``"source"`` key, because the Real-Model
recipe draws one text source per image; ``per_source=False`` puts every chosen source
of an image in one line.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterable, Sequence
from typing import Any

from reallod.data.convert_common import (
    ConvertStats,
    SourceCheck,
    refuse_same_file,
    require_output,
    selected_pairs,
    text_key,
)
from reallod.data.io import JsonlWriter, read_records
from reallod.data.records import Pair, Record
from reallod.errors import ConfigError

_SPLIT_CHARS = re.compile(r"[.?]+")


def sanitize_phrase(text: str) -> str:
    """Remove ``.`` and ``?``: Grounding-DINO splits its prompt into phrases at these tokens."""
    text = _SPLIT_CHARS.sub(" ", text)
    text = " ".join(text.split())
    return text.strip(" ,;:")


def category_pairs(record: Record, sources: Sequence[str] | None) -> list[Pair]:
    """The ``category`` source built from the pairs' category names: one pair per name, all its boxes."""
    boxes: dict[str, list[list[float]]] = {}
    names: dict[str, str] = {}
    for _, pair in selected_pairs(record, sources):
        key = text_key(pair.category)
        if not key:
            continue
        names.setdefault(key, pair.category)
        group = boxes.setdefault(key, [])
        for box in pair.bboxes:
            if box not in group:
                group.append(box)
    return [Pair(bboxes=b, category=names[k], relation="multi" if len(b) > 1 else "single",
                 positive_expressions=[names[k]]) for k, b in boxes.items()]


def _unique(phrases: Iterable[str]) -> list[str]:
    """Sanitised phrases (whitespace already collapsed) without empties or case-insensitive repeats."""
    seen: set[str] = set()
    out = []
    for p in phrases:
        k = text_key(p)
        if p and k not in seen:
            seen.add(k)
            out.append(p)
    return out


def _line(record: Record, pairs: Sequence[Pair], forbidden_negatives: set[str], *, positives: int,
          max_negatives: int, rng: random.Random | None) -> dict[str, Any] | None:
    regions: dict[str, dict[str, Any]] = {}
    raw_negatives: list[str] = []
    for pair in pairs:
        phrases = _unique(sanitize_phrase(p) for p in pair.positive_expressions)
        if positives > 0 and len(phrases) > positives:
            phrases = rng.sample(phrases, positives) if rng else phrases[:positives]
        for phrase in phrases:
            region = regions.setdefault(text_key(phrase), {"phrase": phrase, "boxes": []})
            region["boxes"].extend(b for b in pair.bboxes if b not in region["boxes"])
        raw_negatives.extend(pair.negative_expressions)
    if not regions:
        return None
    if rng:
        rng.shuffle(raw_negatives)
    negatives: list[str] = []
    seen = set(regions) | forbidden_negatives
    for raw in raw_negatives:  # sanitise lazily: stop once the line has its share
        if 0 <= max_negatives <= len(negatives):
            break
        phrase = sanitize_phrase(raw)
        key = text_key(phrase)
        if phrase and key not in seen:
            seen.add(key)
            negatives.append(phrase)
    caption, out_regions = "", []
    for region in regions.values():
        start = len(caption)
        caption += region["phrase"] + ". "
        boxes = region["boxes"]
        out_regions.append({"bbox": boxes[0] if len(boxes) == 1 else boxes, "phrase": region["phrase"],
                            "tokens_positive": [[start, start + len(region["phrase"])]]})
    caption += "".join(n + ". " for n in negatives)
    return {"filename": record.filename, "height": record.height, "width": record.width,
            "grounding": {"caption": caption.rstrip(), "regions": out_regions}}


def record_to_odvg(record: Record, *, sources: Sequence[str] | None = None, per_source: bool = True,
                   positives: int = 1, max_negatives: int = 50, category_source: bool = False,
                   rng: random.Random | None = None) -> list[dict[str, Any]]:
    """The ODVG lines of one record (pure).

    ``positives``: expressions per pair (0 = all), the first ones or, with ``rng``, a random choice.
    ``max_negatives``: per line (-1 = all). A negative that is a positive of any pair of the image
    is never written as a negative (compared as :func:`text_key` does: case, spacing and Unicode form
    aside). ``category_source`` gives every record a ``category`` source, even where ``sources`` leaves
    it out: the record's own, or, when it has none, one made of the category names of the pairs of the
    other chosen sources (of every source when ``category`` is the only one chosen: ``-s category
    --category-source``).
    """
    forbidden = {text_key(sanitize_phrase(p)) for _, pair in selected_pairs(record, None)
                 for p in pair.positive_expressions}
    groups: dict[str, list[Pair]] = {}
    for source, pair in selected_pairs(record, sources):
        groups.setdefault(source, []).append(pair)
    if category_source and "category" not in groups:  # the record's own, else built from the chosen sources
        cats = record.pairs.get("category") or category_pairs(
            record, [s for s in sources or () if s != "category"] or None)
        if cats:
            groups["category"] = list(cats)
    if not per_source:
        groups = {"": [p for items in groups.values() for p in items]}
    lines = []
    for source, pairs in groups.items():
        line = _line(record, pairs, forbidden, positives=positives, max_negatives=max_negatives, rng=rng)
        if line is not None:
            if source:
                line["source"] = source
            lines.append(line)
    return lines


def realdata_to_odvg(src: str | os.PathLike, dst: str | os.PathLike, *, sources: Sequence[str] | None = None,
                     per_source: bool = True, positives: int = 1, max_negatives: int = 50,
                     category_source: bool = False, seed: int | None = None) -> ConvertStats:
    """Stream ``src`` (Real-Data) into ``dst`` (ODVG jsonl, gzip if it ends in .gz), atomically.

    mmdet's ``ODVGDataset`` reads its file as plain text: a gzip output is for storage, not training.
    """
    if max_negatives < -1:
        raise ConfigError(f"--max-negatives must be -1 (all) or more, got {max_negatives}")
    refuse_same_file(src, dst)
    stats = ConvertStats()
    rng = random.Random(seed) if seed is not None else None
    regions = 0
    check = SourceCheck(sources, also=("category",) if category_source else ())
    with JsonlWriter(dst) as out:
        for record in read_records(src):
            stats.records_in += 1
            check.see(record)
            lines = record_to_odvg(record, sources=sources, per_source=per_source, positives=positives,
                                   max_negatives=max_negatives, category_source=category_source, rng=rng)
            if not lines:
                stats.skip("images with no pair of the chosen sources")
            for line in lines:
                out.write_record(line)
                regions += len(line["grounding"]["regions"])
        stats.records_out = out.count
        check.check(src)  # raising here drops the output: an earlier file at dst stays
        require_output(stats, src, "an ODVG line")
    stats.items_out = {"regions": regions}
    return stats
