"""Typed Real-Data records: image → sources → pairs → boxes and expressions.

Every spelling found in the wild is accepted on the way in; only the canonical form is
written. The mapping from variants to canonical keys lives here and nowhere else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

PUBLISHED_SOURCES = ("vlm_short", "vlm_long", "llm")
TRAINING_SOURCES = ("category", *PUBLISHED_SOURCES)
RELATIONS = ("single", "multi")
RELATION_ALIASES = {"multiple": "multi"}
PAIR_KEY_ALIASES = {
    "postive_expressions": "positive_expressions",
    "origin_postive_expressions": "origin_positive_expressions",
}
RECORD_KEYS = ("filename", "height", "width", "caption", "pairs")
PAIR_KEYS = (
    "bboxes", "category", "relation", "positive_expressions", "negative_expressions",
    "origin_positive_expressions", "provenance",
)

Box = list[float]  # [x1, y1, x2, y2] in pixels


def filename_hash(filename: str) -> int:
    """64 bits that stand for a record's image: what ``merge`` and ``validate`` keep of each record to find
    an image's other records (8 bytes a record, not its name)."""
    return int.from_bytes(hashlib.blake2b(filename.encode("utf-8"), digest_size=8).digest(), "big")


def canonical_pair_dict(pair: dict[str, Any]) -> dict[str, Any]:
    """Rename variant keys and relation spellings; the input is not modified. A misspelt key beside its
    canonical one is dropped when both hold the same value, and kept as it is when they differ: neither
    list may be lost without a word (the published training code reads the misspelt one), and the
    schema check names the conflict."""
    out: dict[str, Any] = {}
    for key, value in pair.items():
        canon = PAIR_KEY_ALIASES.get(key, key)
        if canon != key and canon in pair:
            if pair[canon] != value:
                out[key] = value
            continue
        out[canon] = value
    relation = out.get("relation")
    if isinstance(relation, str):
        out["relation"] = RELATION_ALIASES.get(relation, relation)
    return out


def canonical_pairs(pairs: dict[str, Any]) -> dict[str, Any]:
    """Wrap a lone pair dict in a list and canonicalise each pair; non-dicts are left for validation."""
    out: dict[str, Any] = {}
    for source, value in pairs.items():
        items = [value] if isinstance(value, dict) else value
        if isinstance(items, list):
            items = [canonical_pair_dict(p) if isinstance(p, dict) else p for p in items]
        out[source] = items
    return out


@dataclass(slots=True)
class Pair:
    """One object (or group, relation ``multi``) with its expressions from one source."""

    bboxes: list[Box]
    category: str
    relation: str = "single"
    positive_expressions: list[str] = field(default_factory=list)
    negative_expressions: list[str] = field(default_factory=list)
    origin_positive_expressions: list[str] | None = None
    provenance: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Pair:
        d = canonical_pair_dict(d)
        bboxes = d.get("bboxes")
        if bboxes and not isinstance(bboxes[0], list | tuple):
            bboxes = [bboxes]  # a single box written flat
        return cls(
            bboxes=[[float(v) for v in box] for box in (bboxes or [])],
            category=d.get("category", ""),
            relation=d.get("relation") or ("multi" if bboxes and len(bboxes) > 1 else "single"),
            positive_expressions=list(d.get("positive_expressions") or []),
            negative_expressions=list(d.get("negative_expressions") or []),
            origin_positive_expressions=d.get("origin_positive_expressions"),
            provenance=d.get("provenance"),
            extra={k: v for k, v in d.items() if k not in PAIR_KEYS},
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "bboxes": self.bboxes,
            "category": self.category,
            "relation": self.relation,
            "positive_expressions": self.positive_expressions,
            "negative_expressions": self.negative_expressions,
        }
        if self.origin_positive_expressions is not None:
            out["origin_positive_expressions"] = self.origin_positive_expressions
        if self.provenance is not None:
            out["provenance"] = self.provenance
        out.update(self.extra)
        return out


@dataclass(slots=True)
class Record:
    """One image of Real-Data. ``filename`` is relative to an image root given at run time."""

    filename: str
    height: int
    width: int
    pairs: dict[str, list[Pair]] = field(default_factory=dict)
    caption: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        pairs = canonical_pairs(d.get("pairs") or {})
        return cls(
            filename=d["filename"],
            height=int(d["height"]),
            width=int(d["width"]),
            pairs={src: [Pair.from_dict(p) for p in items] for src, items in pairs.items()},
            caption=d.get("caption"),
            extra={k: v for k, v in d.items() if k not in RECORD_KEYS},
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"filename": self.filename, "height": self.height, "width": self.width}
        if self.caption is not None:
            out["caption"] = self.caption
        out["pairs"] = {src: [p.to_dict() for p in items] for src, items in self.pairs.items()}
        out.update(self.extra)
        return out

    def iter_pairs(self) -> Iterator[tuple[str, int, Pair]]:
        """(source, index within source, pair) for every pair of the record."""
        for source, items in self.pairs.items():
            for i, pair in enumerate(items):
                yield source, i, pair

    def num_pairs(self) -> int:
        return sum(len(items) for items in self.pairs.values())
