"""Detection annotations → per-image objects: the data engine's input.

COCO-format json (COCO, LVIS, Objects365) is read by :func:`reallod.data.convert_coco.coco_to_records`
(one reader for ``from-coco`` and the engine); on top of it the engine refuses what would silently
lose or corrupt data: a box outside its image and an image missing under the image root are errors
naming the entry. OpenImages box CSVs (normalised XMin/XMax/YMin/YMax, ``IsGroupOf``) are read with
their class-description CSV (``LabelName,DisplayName``), plain or gzipped, with or without a UTF-8
BOM; image sizes come from the image headers. Boxes end up as pixel xyxy; crowd/group boxes and boxes
under ``min_area`` are filtered by options, and counted in :attr:`Annotations.skipped` (and per image
file, so that a shard's summary counts its own images: :meth:`Annotations.skipped_in`).

What an image holds is more than its kept boxes: ``present`` keeps every category annotated on it
(a skipped crowd of people is still people), ``partial`` those of which a box was skipped (a group
phrase over the kept ones would not be about all of them), and an LVIS image's
``not_exhaustive_category_ids`` are present too; its ``neg_category_ids`` (verified absent) become ``absent``, the only categories its
easy negatives may name. Elsewhere absent means "not annotated", which OpenImages' class hierarchy
does not guarantee (a ``Man`` box makes ``Person`` present; see docs/engine.md).
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from PIL import UnidentifiedImageError

from reallod.data.convert_coco import category_expression, coco_to_records, image_filename, load_json_document
from reallod.data.convert_common import ConvertStats
from reallod.data.images import open_header, upright_size
from reallod.data.io import is_stream, open_input
from reallod.errors import ConfigError, DataError, first_few, json_kind
from reallod.runs.image_root import ImageError, ImageLoader

OUTSIDE_TOLERANCE_PX = 1.0
"""Annotation tools round; a box this far past the border is clamped, beyond it is an error."""


@dataclass(slots=True)
class AnnObject:
    category: str
    box: list[float]  # pixel xyxy


@dataclass(slots=True)
class ImageAnnotation:
    filename: str
    height: int
    width: int
    objects: list[AnnObject]
    entry: str = ""  # where it came from, for messages: "annotations.json: images[3]"
    present: list[str] = field(default_factory=list)  # every category annotated on it, skipped boxes too
    absent: list[str] | None = None  # verified absent (LVIS neg_category_ids); None: every unannotated one
    partial: list[str] = field(default_factory=list)  # categories with a skipped box (crowd, under --min-box-area)
    clamped: int = 0  # boxes past its border by more than OUTSIDE_TOLERANCE_PX, clamped (--clamp-boxes)


@dataclass(slots=True)
class ReadOptions:
    skip_crowd: bool = True
    min_area: float = 0.0  # w × h in pixels; smaller boxes are dropped
    check_images: bool = True  # every image must exist (and have the annotated size) under the root
    clamp_boxes: bool = False  # clamp boxes past the border to the image (counted) instead of refusing them


@dataclass(slots=True)
class Annotations:
    images: list[ImageAnnotation]
    vocabulary: list[str]  # every category name of the dataset (easy negatives come from it)
    skipped: dict[str, int] = field(default_factory=dict)  # the whole file's: reason → n
    skipped_by_image: dict[str, dict[str, int]] = field(default_factory=dict)  # file name → reason → n

    def skipped_in(self, selected: Callable[[str], bool]) -> dict[str, int]:
        """What was skipped on the images whose file name is ``selected`` (a shard's: the summary
        of a ``--shard`` run counts its own images, not the whole file's); images that kept no box
        count as "images with no box"."""
        out: dict[str, int] = {}
        for name, reasons in self.skipped_by_image.items():
            if selected(name):
                for reason, n in reasons.items():
                    out[reason] = out.get(reason, 0) + n
        return out


def read_annotations(path: str | os.PathLike, images_root: str | os.PathLike, *, classes: str | os.PathLike | None = None,
                     options: ReadOptions | None = None) -> Annotations:
    """COCO-format json, or an OpenImages box CSV (``classes`` = its class-description CSV)."""
    options = options or ReadOptions()
    p = str(path)
    if p.lower().endswith((".csv", ".csv.gz")):
        if classes is None:
            raise DataError("an OpenImages box CSV needs its class-description CSV (--classes)", path=p)
        return read_openimages(p, classes, images_root, options)
    if classes is not None:  # ignored, it would still be fingerprinted: a later run without it is refused
        raise ConfigError(f"--classes {classes} is for an OpenImages box CSV (.csv, .csv.gz); {p} is read as a "
                          "COCO-format json, which names its own categories: drop --classes")
    return read_coco(p, images_root, options)


def read_coco(path: str, images_root: str | os.PathLike, options: ReadOptions) -> Annotations:
    data = load_json_document(path, lines_hint="; detection annotations are a COCO json (or an OpenImages box CSV "
                              "with --classes); Real-Data records are re-aligned with `reallod realign`")
    if not isinstance(data, dict):
        raise DataError(f"expected a COCO-format JSON object (images, annotations, categories), got a "
                        f"{type(data).__name__}: give a COCO/LVIS/Objects365 json, or an OpenImages box CSV "
                        "(.csv, .csv.gz) with --classes", path=path)
    outside = _outside_boxes(data, options)
    if outside and not options.clamp_boxes:
        raise all_named([(f"annotations[{i}].bbox", what) for i, _, what, _ in outside],
                        f"boxes lie outside their image by more than {OUTSIDE_TOLERANCE_PX:g} px", path,
                        fix="--clamp-boxes clamps them to the image (or fix the annotations)")
    stats = ConvertStats(skipped_by_item={})
    index = {img.get("id"): i for i, img in enumerate(data.get("images") or []) if isinstance(img, dict)}
    images: list[ImageAnnotation] = []
    clamped = Counter(image_id for _, image_id, _, inside in outside if inside)  # the others are dropped
    for record in coco_to_records(data, path=path, skip_crowd=options.skip_crowd, min_area=options.min_area,
                                  stats=stats):
        i = index[record.extra["image_id"]]
        objects = [AnnObject(pair.category, [float(v) for v in pair.bboxes[0]])
                   for pair in record.pairs.get("category", [])]
        images.append(ImageAnnotation(record.filename, record.height, record.width, objects, f"images[{i}]",
                                      clamped=clamped[record.extra["image_id"]]))
    presence = _coco_presence(data, path)  # the ids are checked now
    for img in images:
        img.present, img.absent, boxes = presence[img.entry]
        kept = Counter(o.category for o in img.objects)
        img.partial = sorted(c for c, n in boxes.items() if n > kept[c])
    vocabulary = [category_expression(c["name"]) for c in data["categories"]]
    if options.check_images:
        check_image_files(images, path, images_root)
    return Annotations(images, vocabulary, dict(stats.skipped), _by_file(data, stats))


def _by_file(data: dict[str, Any], stats: ConvertStats) -> dict[str, dict[str, int]]:
    """file name → what was skipped on that image (two entries may share a file name: summed)."""
    by_id = stats.skipped_by_item or {}
    out: dict[str, dict[str, int]] = {}
    for img in data["images"]:
        for reason, n in by_id.get(img["id"], {}).items():
            reasons = out.setdefault(image_filename(img) or "", {})
            reasons[reason] = reasons.get(reason, 0) + n
    return out


def _coco_presence(data: dict[str, Any], path: str
                   ) -> dict[str, tuple[list[str], list[str] | None, Counter[str]]]:
    """"images[i]" → (every category annotated on it, before the filters, LVIS not-exhaustive ones too;
    its LVIS ``neg_category_ids``, or None; its boxes per category, before the filters). Called once
    coco_to_records has checked the ids."""
    names = {c["id"]: category_expression(c["name"]) for c in data["categories"]}
    annotated: dict[Any, Counter[str]] = {}
    for ann in data["annotations"]:
        annotated.setdefault(ann["image_id"], Counter())[names[ann["category_id"]]] += 1
    out: dict[str, tuple[list[str], list[str] | None, Counter[str]]] = {}
    for i, raw in enumerate(data["images"]):
        boxes = annotated.get(raw["id"], Counter())
        present, absent = set(boxes), None
        if "neg_category_ids" in raw or "not_exhaustive_category_ids" in raw:
            # LVIS is federated: unannotated is unknown, only neg_category_ids are verified absent
            present |= set(_lvis_ids(raw, "not_exhaustive_category_ids", names, path, f"images[{i}]"))
            absent = _lvis_ids(raw, "neg_category_ids", names, path, f"images[{i}]")
        out[f"images[{i}]"] = (sorted(present), absent, boxes)
    return out


def _lvis_ids(raw: dict[str, Any], key: str, names: dict[Any, str], path: str, where: str) -> list[str]:
    """The category names of an LVIS image's id list (missing: none)."""
    ids = raw.get(key, [])
    if not isinstance(ids, list):
        raise DataError(f"expected a list of category ids, got {json_kind(ids)}", path=path,
                        field=f"{where}.{key}")
    out = []
    for j, cid in enumerate(ids):
        if not isinstance(cid, int) or isinstance(cid, bool) or cid not in names:
            raise DataError(f"category id {cid!r} is not in categories", path=path, field=f"{where}.{key}[{j}]")
        out.append(names[cid])
    return out


def _outside_boxes(data: Any, options: ReadOptions) -> list[tuple[int, Any, str, bool]]:
    """The boxes that leave their image (index, image id, what is wrong, whether any of it is inside): an
    annotation error, unless ``--clamp-boxes`` (coco_to_records clamps them, or drops one with nothing
    inside). Crowd boxes that are skipped do not count."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
            data.get("annotations"), list):
        return []  # coco_to_records names what is missing
    sizes = {img.get("id"): (img.get("width"), img.get("height")) for img in data["images"] if isinstance(img, dict)}
    bad: list[tuple[int, Any, str, bool]] = []
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or (options.skip_crowd and ann.get("iscrowd")):
            continue
        size, bbox = sizes.get(ann.get("image_id")), ann.get("bbox")
        if size is None or not (isinstance(bbox, list) and len(bbox) == 4 and all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)):
            continue  # coco_to_records names wrong ids and malformed boxes
        w, h = size
        if not (isinstance(w, int) and isinstance(h, int)):
            continue
        x, y, bw, bh = bbox
        t = OUTSIDE_TOLERANCE_PX
        if x < -t or y < -t or x + bw > w + t or y + bh > h + t:
            inside = min(x + bw, w) > max(x, 0) and min(y + bh, h) > max(y, 0)
            bad.append((i, ann.get("image_id"), f"box [x, y, w, h] = {bbox} lies outside its image ({w}x{h}, "
                        f"image id {ann.get('image_id')})", inside))
    return bad


SHOWN = 5
"""How many problems of one kind an error names (all are counted): a file is fixed in one go, not one
problem a run."""


def all_named(problems: list[tuple[str, str]], what: str, path: str, *, fix: str = "") -> DataError:
    """One error for every problem (field, why) of a kind: the first :data:`SHOWN` named, the others
    counted, then ``fix`` (what the user can do about them all); one problem alone is located by its field."""
    fix = f"; {fix}" if fix else ""
    if len(problems) == 1:
        return DataError(problems[0][1] + fix, path=path, field=problems[0][0])
    return DataError(f"{len(problems)} {what}: " + first_few([f"{f}: {m}" for f, m in problems], SHOWN, sep="; ")
                     + fix, path=path)


def check_image_files(images: Iterable[ImageAnnotation], path: str, images_root: str | os.PathLike) -> None:
    """Every image given exists under the root, is readable and has its annotated size: one error names
    them all. The engine checks only the images a run will generate (those its ``--limit`` or ``--shard``
    select and its journal has not done): opening a header costs tens of microseconds, minutes over
    Objects365 at every start of every shard."""
    loader = ImageLoader(images_root)
    bad = [(f"{img.entry}.file_name", why) for img in images if (why := _image_problem(loader, img))]
    if bad:
        raise all_named(bad, "images cannot be used", path)


def _image_problem(loader: ImageLoader, img: ImageAnnotation) -> str | None:
    """Why an annotated image cannot be used (None: it can)."""
    try:
        file = loader.resolve(img.filename)
    except ImageError as e:
        return f"{img.filename!r}: {e}"
    if not file.is_file():
        return f"image {img.filename!r} not found under {loader.root}"
    try:
        with open_header(file) as im:
            size = upright_size(im)  # the space every part of reallod loads images in
    except (UnidentifiedImageError, OSError) as e:
        return f"image {img.filename!r} is not readable ({e})"
    if size != (img.width, img.height):
        return f"image {img.filename!r} is {size[0]}x{size[1]} but the annotation says {img.width}x{img.height}"
    return None


# ---------------------------------------------------------------------------------------------
# OpenImages
# ---------------------------------------------------------------------------------------------

_OI_COLUMNS = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax")


def _csv_rows(path: str) -> Iterator[tuple[int, list[str]]]:
    """(line, row) of a CSV file, plain or gzipped, UTF-8 with or without a BOM (a BOM left in would
    rename the first column); undecodable text, a broken gzip stream and what the csv module cannot
    parse are errors naming the line."""
    stream, gz = open_input(path)  # names a missing file; opened once, so a pipe keeps its first lines
    f = io.TextIOWrapper(gzip.GzipFile(fileobj=stream) if gz else stream, encoding="utf-8-sig", newline="")
    with f, stream:
        reader = csv.reader(f)
        try:
            for row in reader:
                yield reader.line_num, row
        except UnicodeDecodeError as e:
            line = _bad_utf8_line(path, gz)
            raise DataError(f"not UTF-8 text ({e.reason}): save the file as UTF-8", path=path,
                            line=line) from None
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"gzip stream is corrupt or truncated ({e})", path=path,
                            line=reader.line_num + 1) from None
        except csv.Error as e:  # a field over the csv module's limit, a NUL byte: no box CSV has them
            raise DataError(f"not a readable CSV line ({e}); is this an OpenImages CSV? A quote left open "
                            "runs on over the following lines", path=path, line=reader.line_num) from None


def _bad_utf8_line(path: str, gz: bool) -> int | None:
    """The first line that is not UTF-8 (the decoder reads ahead, so its error has no line); None for a
    pipe, which cannot be read again."""
    if is_stream(path):
        return None
    with gzip.open(path, "rb") if gz else open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return n
    return None


def read_class_descriptions(path: str | os.PathLike) -> dict[str, str]:
    """``LabelName,DisplayName`` lines (with or without a header) → label → display name."""
    out: dict[str, str] = {}
    for n, row in _csv_rows(str(path)):
        if not row or (n == 1 and row[0] == "LabelName"):
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise DataError("expected LabelName,DisplayName", path=str(path), line=n)
        out[row[0].strip()] = " ".join(row[1].split())
    if not out:
        raise DataError("no class descriptions", path=str(path))
    return out


def read_openimages(path: str, classes: str | os.PathLike, images_root: str | os.PathLike,
                    options: ReadOptions, *, extension: str = ".jpg") -> Annotations:
    """OpenImages boxes: one row per box; images are ``<ImageID>.jpg`` under the root (their
    sizes come from the image files, which therefore must exist)."""
    names = read_class_descriptions(classes)
    loader = ImageLoader(images_root)
    by_image: dict[str, ImageAnnotation] = {}
    stats = ConvertStats(skipped_by_item={})  # per file name: a shard counts its own images
    rows = _csv_rows(path)
    header = next(rows, (1, []))[1]
    missing = [c for c in _OI_COLUMNS if c not in header]
    if missing:
        raise DataError(f"missing column(s) {', '.join(missing)} (not an OpenImages box CSV?)", path=path, line=1)
    for line, values in rows:
        if not values:
            continue  # a blank line, as csv.DictReader skips it
        if len(values) != len(header):
            raise DataError(f"{len(values)} field(s) where the header has {len(header)}", path=path, line=line)
        row = dict(zip(header, values, strict=True))
        label = row["LabelName"]
        if label not in names:
            raise DataError(f"label {label!r} is not in the class descriptions {classes}", path=path, line=line,
                            field="LabelName")
        try:
            x1, x2, y1, y2 = (float(row[k]) for k in ("XMin", "XMax", "YMin", "YMax"))
        except (TypeError, ValueError):
            raise DataError("XMin/XMax/YMin/YMax must be numbers", path=path, line=line) from None
        if x2 < x1 or y2 < y1:
            raise DataError(f"box (XMin {x1}, XMax {x2}, YMin {y1}, YMax {y2}): a maximum under its minimum",
                            path=path, line=line)
        outside = not all(-1e-3 <= v <= 1 + 1e-3 for v in (x1, x2, y1, y2))
        if outside and not options.clamp_boxes:
            raise DataError(f"box (XMin {x1}, XMax {x2}, YMin {y1}, YMax {y2}) lies outside the image "
                            "(coordinates are fractions of the image size; --clamp-boxes clamps them to it)",
                            path=path, line=line)
        image_id = row["ImageID"]
        img = by_image.get(image_id)
        if img is None:
            img = ImageAnnotation(image_id + extension, 0, 0, [], f"line {line}")
            size = _image_size(loader, img.filename, path, line)
            img.width, img.height = size
            by_image[image_id] = img
        _add(img.present, names[label])  # in the image, whatever becomes of its box
        if options.skip_crowd and row.get("IsGroupOf") == "1":
            stats.skip("crowd boxes", item=img.filename)
            _add(img.partial, names[label])
            continue
        box = [min(max(x1, 0.0), 1.0) * img.width, min(max(y1, 0.0), 1.0) * img.height,
               min(max(x2, 0.0), 1.0) * img.width, min(max(y2, 0.0), 1.0) * img.height]
        area = (box[2] - box[0]) * (box[3] - box[1])
        if area <= 0 or area < options.min_area:
            stats.skip("boxes under the minimum area" if area > 0 else "boxes with no area", item=img.filename)
            _add(img.partial, names[label])
            continue
        img.clamped += outside
        img.objects.append(AnnObject(names[label], box))
    images = [img for img in by_image.values() if img.objects]
    for img in by_image.values():
        if not img.objects:
            stats.skip("images with no box", item=img.filename)
    for img in images:
        img.present.sort()
        img.partial.sort()
    return Annotations(images, sorted(set(names.values())), dict(stats.skipped), stats.skipped_by_item or {})


def _add(names: list[str], name: str) -> None:
    if name not in names:
        names.append(name)


def _image_size(loader: ImageLoader, filename: str, path: str, line: int) -> tuple[int, int]:
    try:
        file = loader.resolve(filename)
        with open_header(file) as im:
            return upright_size(im)  # OpenImages boxes are fractions of the image as it is shown
    except FileNotFoundError:
        raise DataError(f"image {filename!r} not found under {loader.root}", path=path, line=line,
                        field="ImageID") from None
    except (ImageError, UnidentifiedImageError, OSError) as e:
        raise DataError(f"image {filename!r} is not readable ({e})", path=path, line=line, field="ImageID") from None


