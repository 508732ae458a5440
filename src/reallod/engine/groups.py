"""Groups (pure): categories with several instances in an image get expressions for all of them."""

from __future__ import annotations

from reallod.engine.annotations import AnnObject


def group_candidates(objects: list[AnnObject], *, min_members: int = 2) -> list[tuple[str, list[list[float]]]]:
    """(category, boxes of all its instances) for every category with ``min_members`` or more, in
    order of first appearance; boxes left to right so the order carries no annotation accident."""
    by_cat: dict[str, list[list[float]]] = {}
    for obj in objects:
        by_cat.setdefault(obj.category, []).append(obj.box)
    return [(cat, sorted(boxes, key=lambda b: (b[0], b[1]))) for cat, boxes in by_cat.items()
            if len(boxes) >= min_members]
