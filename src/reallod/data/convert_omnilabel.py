"""Real-Data → OmniLabel-style ground-truth json, so a Real-Data split can be scored as a LOD benchmark.

Format: ``images`` {id, file_name, height, width}; ``descriptions`` {id, text, image_ids,
anno_info{type}}; ``annotations`` {id, image_id, bbox xywh, description_ids}. Per image:

- every positive expression is a free-form description (``anno_info.type == "object_description"``,
  type D) referring to its pair's boxes; the same text on two pairs refers to the boxes of both;
- every negative expression is a description of that image that refers to no box (a "Dn" pair:
  any box predicted for it is a false positive); a negative that is also a positive of the image,
  in any source (chosen or not), is left out;
- positives of the ``category`` source, and with ``categories=True`` each pair's category name, are
  plain categories (``"object_class"``, type C).

Descriptions are numbered per image (a text on two images is two descriptions): the evaluator pools
(image, description) pairs anyway, and it keeps memory from growing with the descriptions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reallod.data.convert_common import (
    ConvertStats,
    JsonSectionsWriter,
    SourceCheck,
    add_image_records,
    refuse_same_file,
    selected_pairs,
    text_key,
    unique_texts,
    xyxy_to_xywh,
)
from reallod.data.records import Record

TYPE_DESCRIPTION = "object_description"
TYPE_CATEGORY = "object_class"


def _positive_keys(record: Record, categories: bool) -> set[str]:
    """What any source of the record says is in the image (chosen or not): never a negative of it."""
    keys = set()
    for _, pair in selected_pairs(record, None):
        keys.update(text_key(t) for t in pair.positive_expressions)
        if categories:
            keys.add(text_key(pair.category))
    return keys


def record_to_omnilabel(record: Record, image_id: int, first_desc_id: int, first_ann_id: int, *,
                        sources: Sequence[str] | None = None, categories: bool = False,
                        stats: ConvertStats | None = None
                        ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The image, descriptions and annotations of one record (pure)."""
    descs: dict[tuple[str, str], dict[str, Any]] = {}
    boxes: dict[tuple[float, ...], set[int]] = {}

    def describe(kind: str, text: str, source: str, pair_boxes: list[list[float]] | None) -> None:
        desc = descs.get((kind, text_key(text)))
        if desc is None:
            desc = descs[(kind, text_key(text))] = {
                "id": first_desc_id + len(descs), "text": text, "image_ids": [image_id],
                "anno_info": {"type": kind, "sources": []},
            }
        if source not in desc["anno_info"]["sources"]:
            desc["anno_info"]["sources"].append(source)
        for box in pair_boxes or []:
            boxes.setdefault(tuple(box), set()).add(desc["id"])

    chosen = list(selected_pairs(record, sources))
    for source, pair in chosen:
        kind = TYPE_CATEGORY if source == "category" else TYPE_DESCRIPTION
        for text in unique_texts(pair.positive_expressions):
            describe(kind, text, source, pair.bboxes)
        if categories and pair.category.strip():
            describe(TYPE_CATEGORY, " ".join(pair.category.split()), source, pair.bboxes)
    positive_keys = _positive_keys(record, categories)
    for source, pair in chosen:
        for text in unique_texts(pair.negative_expressions):
            if text_key(text) in positive_keys:
                if stats is not None:
                    stats.skip("negatives that are also positives of the image")
                continue
            describe(TYPE_DESCRIPTION, text, source, None)

    image = {"id": image_id, "file_name": record.filename, "height": record.height, "width": record.width}
    anns = [{"id": first_ann_id + i, "image_id": image_id, "bbox": xyxy_to_xywh(box),
             "description_ids": sorted(ids)} for i, (box, ids) in enumerate(boxes.items())]
    return image, list(descs.values()), anns


def realdata_to_omnilabel(src: str | os.PathLike, dst: str | os.PathLike, *,
                          sources: Sequence[str] | None = None, categories: bool = False) -> ConvertStats:
    """Stream ``src`` into an OmniLabel-style GT json at ``dst`` (atomic; memory holds the image names)."""
    refuse_same_file(src, dst)
    stats = ConvertStats()
    # "name" must not contain "omnilabel": the official tools then demand their own version string.
    header = {"info": {"name": "reallod", "description": f"converted from Real-Data {Path(src).name}"}}

    def convert(record: Record, ids: dict[str, int]) -> dict[str, list[Any]] | None:
        image, descs, anns = record_to_omnilabel(record, ids["images"], ids["descriptions"], ids["annotations"],
                                                 sources=sources, categories=categories, stats=stats)
        return {"images": [image], "descriptions": descs, "annotations": anns} if descs else None

    check = SourceCheck(sources)  # a near-miss --source is refused before anything is written
    with JsonSectionsWriter(dst, ["images", "descriptions", "annotations"], header=header) as out:
        add_image_records(src, out, convert, check=check, stats=stats, what="an image with a description")
    stats.items_out = {"descriptions": out.counts["descriptions"], "annotations": out.counts["annotations"]}
    return stats
