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


def kept_groups(objects: list[AnnObject], kept: list[AnnObject], *,
                min_members: int = 2) -> tuple[list[tuple[str, list[list[float]]]], int]:
    """(the groups of ``objects`` whose every instance is ``kept``, how many groups lost one).

    ``kept`` are the objects a record keeps (``--max-objects``). A group phrase is about all the
    instances of its category ("the three people"): over the kept ones only it would be wrong, over
    all of them it would cover boxes the record dropped, so such a group is left out."""
    kept_ids = {id(o) for o in kept}
    short = {o.category for o in objects if id(o) not in kept_ids}  # categories with a dropped instance
    groups = group_candidates(objects, min_members=min_members)
    whole = [g for g in groups if g[0] not in short]
    return whole, len(groups) - len(whole)
