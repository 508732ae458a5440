"""Real-Data ↔ COCO detection json.

Out (``realdata_to_coco``): one COCO image per record, categories numbered from 1 in order of first
appearance, one annotation per distinct (category, box) of an image with boxes as xywh. The
expressions of single objects stay on the annotation: ``expressions`` (positives of every ``single``
pair of the box), ``negative_expressions`` and ``sources`` (of every pair that holds the box). The
same box described by several sources is one annotation, so the file is a valid detection ground
truth. A ``multi`` pair's expressions ("the two dogs") refer to its boxes together, never to one of
them: they go to a ``groups`` section, one entry per distinct (category, boxes) of an image with its
``annotation_ids``, and each annotation lists the groups it is in as ``group_ids``.

In (``coco_to_realdata``): COCO, LVIS and Objects365 detection json → the Real-Data skeleton the data
engine starts from: one ``category``-source pair per box whose only positive expression is the
category name. A COCO json is one document, so it is read whole (the output is still streamed).
"""

from __future__ import annotations

import math
import os
import posixpath
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import orjson

from reallod.data.convert_common import (
    ConvertStats,
    EmptyRunError,
    JsonSectionsWriter,
    SourceCheck,
    add_image_records,
    refuse_same_file,
    selected_pairs,
    text_key,
    unique_texts,
    xyxy_to_xywh,
)
from reallod.data.io import JsonlWriter, read_whole
from reallod.data.meter import current_meter
from reallod.data.records import Pair, Record
from reallod.data.schema import MAX_SIDE, visible
from reallod.errors import DataError, json_kind

_METER_STEP = 4096  # boxes or images told to the progress meter at a time (once each would cost seconds)

# ----------------------------------------------------------------------------------------------
# Real-Data → COCO
# ----------------------------------------------------------------------------------------------


class CategoryIndex:
    """Category name → COCO id (from 1, in order of first appearance)."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.names: list[str] = []

    def id_for(self, name: str) -> int:
        key = text_key(name)
        if key not in self.ids:
            self.names.append(" ".join(name.split()))
            self.ids[key] = len(self.names)
        return self.ids[key]

    def categories(self) -> list[dict[str, Any]]:
        return [{"id": i, "name": n} for i, n in enumerate(self.names, 1)]


def record_to_coco(record: Record, image_id: int, first_ann_id: int, categories: CategoryIndex,
                   sources: Sequence[str] | None = None, first_group_id: int = 1,
                   ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The COCO image, annotations and groups of one record (pure apart from growing ``categories``).

    A ``single`` pair's expressions go on its box's annotation; a ``multi`` pair's on a group of its
    boxes' annotations, which each name the group in ``group_ids``."""
    image = {"id": image_id, "file_name": record.filename, "height": record.height, "width": record.width}
    anns: dict[tuple, dict[str, Any]] = {}
    groups: dict[tuple, dict[str, Any]] = {}
    for source, pair in selected_pairs(record, sources):
        cat_id = categories.id_for(pair.category)
        members = list({id(a): a for a in (_annotation(anns, cat_id, box, image_id, first_ann_id, source)
                                           for box in pair.bboxes)}.values())  # a box listed twice: once
        if pair.relation == "multi":
            key = (cat_id, *(tuple(b) for b in pair.bboxes))
            target = groups.get(key)
            if target is None:
                target = groups[key] = {
                    "id": first_group_id + len(groups), "image_id": image_id, "category_id": cat_id,
                    "annotation_ids": [a["id"] for a in members],
                    "expressions": [], "negative_expressions": [], "sources": [],
                }
                for ann in members:
                    ann["group_ids"].append(target["id"])
            _add_expressions(target, pair, source)
        else:
            for ann in members:
                _add_expressions(ann, pair, source)
    return image, list(anns.values()), list(groups.values())


def _annotation(anns: dict[tuple, dict[str, Any]], cat_id: int, box: list[float], image_id: int,
                first_id: int, source: str) -> dict[str, Any]:
    """The annotation of (category, box), made on first sight; ``source`` added to its sources."""
    key = (cat_id, *box)
    ann = anns.get(key)
    if ann is None:
        x, y, w, h = xyxy_to_xywh(box)
        ann = anns[key] = {
            "id": first_id + len(anns), "image_id": image_id, "category_id": cat_id,
            "bbox": [x, y, w, h], "area": _area(w, h), "iscrowd": 0,
            "expressions": [], "negative_expressions": [], "sources": [], "group_ids": [],
        }
    if source not in ann["sources"]:
        ann["sources"].append(source)
    return ann


def _add_expressions(target: dict[str, Any], pair: Pair, source: str) -> None:
    target["expressions"] = unique_texts([*target["expressions"], *pair.positive_expressions])
    target["negative_expressions"] = unique_texts([*target["negative_expressions"], *pair.negative_expressions])
    if source not in target["sources"]:
        target["sources"].append(source)


def _area(w: float, h: float) -> float | int:
    """w × h of the written (3-decimal) sides: exact at 6 decimals, so a box with sides has an area."""
    a = w * h
    return int(a) if float(a).is_integer() else round(a, 6)


def realdata_to_coco(src: str | os.PathLike, dst: str | os.PathLike, *,
                     sources: Sequence[str] | None = None, keep_empty: bool = False) -> ConvertStats:
    """Stream ``src`` into a COCO json at ``dst`` (atomic; memory holds the category and image names).

    Images with no pair of the chosen sources are left out unless ``keep_empty``. ``multi`` pairs
    become entries of the ``groups`` section (see the module's docstring).
    """
    refuse_same_file(src, dst)
    stats = ConvertStats()
    categories = CategoryIndex()

    def convert(record: Record, ids: dict[str, int]) -> dict[str, list[Any]] | None:
        image, anns, groups = record_to_coco(record, ids["images"], ids["annotations"], categories, sources,
                                             ids["groups"])
        return {"images": [image], "annotations": anns, "groups": groups} if anns or keep_empty else None

    check = SourceCheck(sources)  # a near-miss --source is refused before anything is written
    with JsonSectionsWriter(dst, ["images", "annotations", "groups", "categories"],
                            header={"info": {"description": f"converted from Real-Data {Path(src).name}"}}) as out:
        add_image_records(src, out, convert, check=check, stats=stats, what="a COCO image")
        for cat in categories.categories():
            out.add("categories", cat)
    stats.items_out = {"annotations": out.counts["annotations"], "groups": out.counts["groups"],
                       "categories": out.counts["categories"]}
    return stats


# ----------------------------------------------------------------------------------------------
# COCO / LVIS / Objects365 → Real-Data skeleton
# ----------------------------------------------------------------------------------------------


def category_expression(name: str) -> str:
    """LVIS writes ``aerosol_can`` and ``bow_(weapon)``: as an expression, ``aerosol can``, ``bow (weapon)``."""
    return " ".join(name.replace("_", " ").split())


def image_filename(image: dict[str, Any]) -> str | None:
    """``file_name``, or for LVIS (which has none) the last two parts of ``coco_url``: ``train2017/x.jpg``."""
    name = image.get("file_name")
    if isinstance(name, str) and name.strip():
        return name
    url = image.get("coco_url")
    if isinstance(url, str) and url.strip():
        parts = [p for p in urlparse(url).path.split("/") if p]
        return posixpath.join(*parts[-2:]) if parts else None
    return None


def _fail(path: str, field: str, message: str) -> DataError:
    return DataError(message, path=path, field=field)


def _check_list(data: dict[str, Any], key: str, path: str) -> list[Any]:
    value = data.get(key)
    if value is None:
        raise _fail(path, key, "missing (not a COCO detection json?)")
    if not isinstance(value, list):
        raise _fail(path, key, f"expected a list, got {json_kind(value)}")
    return value


def _int_field(obj: Any, key: str, where: str, path: str) -> int:
    if not isinstance(obj, dict):
        raise _fail(path, where, f"expected an object, got {json_kind(obj)}")
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise _fail(path, f"{where}.{key}", "missing" if v is None else f"expected an integer, got {v!r}")
    return v


def _unique_id(obj: Any, where: str, seen: dict[int, int], index: int, path: str) -> int:
    """The ``id`` of ``obj``, refused when an earlier entry has it: annotations could not tell them apart."""
    oid = _int_field(obj, "id", where, path)
    first = seen.setdefault(oid, index)
    if first != index:
        section = where.split("[", 1)[0]
        raise _fail(path, f"{where}.id", f"id {oid} already used by {section}[{first}]; annotations refer to "
                    f"{section} by id, so each needs its own: renumber one in the json")
    return oid


def coco_to_records(data: Any, *, path: str = "<coco>", skip_crowd: bool = False, min_area: float = 0.0,
                    prefix: str = "", synonyms: bool = False, keep_empty: bool = False,
                    stats: ConvertStats | None = None) -> Iterator[Record]:
    """Real-Data skeleton records of a parsed COCO detection json (pure; errors name ``path`` and the field).

    Boxes are converted from xywh to xyxy and clamped to the image; boxes with no area inside the
    image, crowd boxes (with ``skip_crowd``) and boxes under ``min_area`` (w × h, pixels) are dropped.
    With ``synonyms`` the LVIS ``synonyms`` become extra positive expressions.
    """
    stats = stats if stats is not None else ConvertStats()
    if not isinstance(data, dict):
        raise _fail(path, "", f"expected a COCO json object, got {json_kind(data)}")
    images = _check_list(data, "images", path)
    anns = _check_list(data, "annotations", path)
    cats = _check_list(data, "categories", path)

    cat_texts: dict[int, list[str]] = {}
    cat_names: dict[int, str] = {}
    cat_at: dict[int, int] = {}
    for i, cat in enumerate(cats):
        cid = _unique_id(cat, f"categories[{i}]", cat_at, i, path)
        name = cat.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _fail(path, f"categories[{i}].name", f"expected a non-empty string, got {name!r}")
        cat_names[cid] = category_expression(name)
        if not cat_names[cid]:  # Real-Data refuses a pair with an empty category
            raise _fail(path, f"categories[{i}].name", f"{name!r} gives an empty expression ('_' become "
                        "spaces) and Real-Data needs a category text: rename the category in the json")
        texts = [cat_names[cid]]
        if synonyms and isinstance(cat.get("synonyms"), list):
            texts += [category_expression(s) for s in cat["synonyms"] if isinstance(s, str)]
        for j, text in enumerate(texts):  # every other command refuses such an expression
            if text and not visible(text):
                where = "name" if j == 0 else "synonyms"
                raise _fail(path, f"categories[{i}].{where}", f"{text!r} has only zero-width, format or control "
                            "characters: a tokenizer gives it no token; rename it in the json")
        cat_texts[cid] = unique_texts(texts)

    sizes: dict[int, tuple[int, int]] = {}
    image_at: dict[int, int] = {}
    for i, img in enumerate(images):
        iid = _unique_id(img, f"images[{i}]", image_at, i, path)
        h = _int_field(img, "height", f"images[{i}]", path)
        w = _int_field(img, "width", f"images[{i}]", path)
        if h <= 0 or w <= 0:
            raise _fail(path, f"images[{i}]", f"height/width must be positive, got {h}x{w}")
        for key, v in (("height", h), ("width", w)):  # Real-Data's own limit: every command refuses more
            if v > MAX_SIDE:
                raise _fail(path, f"images[{i}].{key}", f"{v} is too large (at most {MAX_SIDE}): fix the "
                            "image's size in the json")
        sizes[iid] = (h, w)

    meter = current_meter()
    meter.phase("converting", len(anns) + len(images), unit="boxes + images")
    by_image: dict[int, list[tuple[int, list[float]]]] = {}
    for i, ann in enumerate(anns):
        if not i % _METER_STEP:
            meter.advance(min(_METER_STEP, len(anns) - i))
        where = f"annotations[{i}]"
        iid = _int_field(ann, "image_id", where, path)
        cid = _int_field(ann, "category_id", where, path)
        if iid not in sizes:
            raise _fail(path, f"{where}.image_id", f"image id {iid} is not in images")
        if cid not in cat_names:
            raise _fail(path, f"{where}.category_id", f"category id {cid} is not in categories")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)):
            raise _fail(path, f"{where}.bbox", f"expected [x, y, w, h] finite numbers, got {bbox!r}")
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1):  # a string "0" is truthy: it would read as a crowd (false, true are 0, 1)
            raise _fail(path, f"{where}.iscrowd", f"expected 0 or 1, got {crowd!r}")
        if skip_crowd and crowd == 1:
            stats.skip("crowd boxes", item=iid)
            continue
        x, y, w, h = bbox
        if w * h < min_area or w <= 0 or h <= 0:
            stats.skip("boxes under the minimum area" if w > 0 and h > 0 else "boxes with no area", item=iid)
            continue
        ih, iw = sizes[iid]
        x1, y1 = max(0.0, float(x)), max(0.0, float(y))
        x2, y2 = min(float(iw), float(x + w)), min(float(ih), float(y + h))
        if x2 <= x1 or y2 <= y1:
            stats.skip("boxes outside the image", item=iid)
            continue
        if (x1, y1, x2, y2) != (x, y, x + w, y + h):
            stats.note("boxes clamped to the image")
        by_image.setdefault(iid, []).append((cid, [x1, y1, x2, y2]))

    for i, img in enumerate(images):
        if not i % _METER_STEP:
            meter.advance(min(_METER_STEP, len(images) - i))
        iid = img["id"]
        filename = image_filename(img)
        if filename is None:
            raise _fail(path, f"images[{i}].file_name", "missing (and no coco_url to take the name from)")
        boxes = by_image.get(iid, [])
        if not boxes and not keep_empty:
            stats.skip("images with no box", item=iid)
            continue
        h, w = sizes[iid]
        pairs = [Pair(bboxes=[box], category=cat_names[cid], relation="single",
                      positive_expressions=list(cat_texts[cid])) for cid, box in boxes]
        yield Record(filename=posixpath.join(prefix, filename) if prefix else filename, height=h, width=w,
                     pairs={"category": pairs} if pairs else {}, extra={"image_id": iid})


def load_json_document(path: str | os.PathLike, *, lines_hint: str = "") -> Any:
    """A whole JSON document (plain or gzip), with errors naming the file. A file of JSON Lines (its first
    line a whole JSON value: Real-Data records?) is named as one, ``lines_hint`` saying what reads it,
    instead of "invalid JSON: unexpected content after document: line 2"."""
    path = str(path)
    data = read_whole(path)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        if _first_line_parses(data):
            raise DataError("looks like JSON Lines (one JSON value a line: Real-Data records?), not one JSON "
                            f"document such as a COCO json{lines_hint}", path=path) from None
        raise DataError(f"invalid JSON: {e}", path=path) from None


def _first_line_parses(data: bytes) -> bool:
    """Whether the first non-blank line of ``data``, which has more after it, is a JSON value alone."""
    first, _, rest = data.strip().partition(b"\n")
    try:
        orjson.loads(first)
    except orjson.JSONDecodeError:
        return False
    return bool(rest.strip())


def coco_to_realdata(src: str | os.PathLike, dst: str | os.PathLike, *, skip_crowd: bool = False,
                     min_area: float = 0.0, prefix: str = "", synonyms: bool = False,
                     keep_empty: bool = False) -> ConvertStats:
    """Read a COCO detection json and write the Real-Data skeleton to ``dst`` atomically."""
    refuse_same_file(src, dst)
    stats = ConvertStats()
    data = load_json_document(src, lines_hint="; Real-Data records need no conversion: realign and the data "
                              "commands read them as they are (`reallod data convert coco` makes a COCO json of them)")
    boxes = 0
    with JsonlWriter(dst) as out:
        for record in coco_to_records(data, path=str(src), skip_crowd=skip_crowd, min_area=min_area,
                                      prefix=prefix, synonyms=synonyms, keep_empty=keep_empty, stats=stats):
            out.write_record(record)
            boxes += record.num_pairs()
        stats.records_in = len(data["images"])
        stats.records_out = out.count
        if not stats.records_in:  # raising here drops the output: an earlier file at dst stays
            raise EmptyRunError("no images in this COCO json; nothing written", path=str(src), field="images")
        if not stats.records_out:
            why = ", ".join(f"{n} {reason}" for reason, n in sorted(stats.skipped.items()))
            raise EmptyRunError(f"none of its {stats.records_in} images kept a box ({why}; --keep-empty keeps "
                                "images with no box); nothing written", path=str(src))
    stats.items_out = {"boxes": boxes}
    return stats
