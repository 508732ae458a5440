"""OmniLabel: ground truth, predictions and the official metric.

Ground truth (any version): ``images`` {id, file_name, ...}; ``descriptions`` {id, text, image_ids,
anno_info.type}, where type ``object_description`` is a free-form description (D) and anything else
a plain category (C); ``annotations`` {id, image_id, bbox xywh, description_ids, iscrowd?}. An image's
label space is every description listing it, in the order of ``descriptions``.

Predictions, the toolkit's result format: a list of {image_id, bbox xywh, description_ids, scores}.

The metric is the official toolkit's (omnilabeltools ``OmniLabelEval``): every (image, description)
pair of a label space is matched COCO-style, then precision/recall are pooled over all pairs of a
group into one curve. Groups: categ (C), descr (D: Dp pairs, which refer to at least one box of the
image, and Dn pairs, which refer to none, so any box on them is a false positive), descr-pos (Dp),
descr-S/M/L (D by word count: ≤3, 4–8, ≥9). AP is the harmonic mean ``2ab / (a + b + 1e-5)`` of
AP-categ and AP-descr. Predictions for a description outside its image's label space are ignored,
as the toolkit does; with ``skip_categories`` the label spaces hold free-form descriptions only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from reallod.errors import DataError, json_kind
from reallod.eval import coco_ap
from reallod.eval.common import (
    INT64_MAX,
    INT64_MIN,
    EntryChecker,
    EvalImage,
    EvalResult,
    IdIndex,
    Predictions,
    all_instances,
    bbox_array,
    boxes_and_scores_ok,
    fast_columns,
    id_array,
    id_problem,
    is_finite,
    metric,
    no_gc,
    numeric_array,
    prompt_problem,
    read_json,
    report_unknown,
    write_json_list,
)

NAME = "omnilabel"
TYPE_DESCRIPTION = "object_description"
_MAX_LEN = 100_000
# name, pair types, word-count range (inclusive)
GROUPS: tuple[tuple[str, tuple[str, ...], tuple[int, int]], ...] = (
    ("categ", ("C",), (0, _MAX_LEN)),
    ("descr", ("Dp", "Dn"), (0, _MAX_LEN)),
    ("descr-pos", ("Dp",), (0, _MAX_LEN)),
    ("descr-S", ("Dp", "Dn"), (0, 3)),
    ("descr-M", ("Dp", "Dn"), (4, 8)),
    ("descr-L", ("Dp", "Dn"), (9, _MAX_LEN)),
)


@dataclass
class Description:
    id: int
    text: str
    kind: str  # "C" (plain category) or "D" (free-form description)


@dataclass
class OmniLabelGT:
    """The ground truth, checked, with boxes as columns (one row per box and description)."""

    path: str | None
    images: list[dict[str, Any]]  # id, file_name, width, height, in file order
    descriptions: dict[int, Description]
    labelspace: dict[int, list[int]]  # image id → description ids (file order)
    box_image: np.ndarray  # (B,) int64
    box_descr: np.ndarray  # (B,) int64
    box_xywh: np.ndarray  # (B, 4) float64
    box_crowd: np.ndarray  # (B,) bool
    box_zero_id: np.ndarray  # (B,) bool: annotation id 0 (never counts as matched, see coco_ap)
    skip_categories: bool = False
    notes: list[str] = field(default_factory=list)

    def eval_images(self) -> list[EvalImage]:
        """Images with their label space as prompts, in file order."""
        out = []
        for img in self.images:
            ids = self.labelspace.get(img["id"], [])
            out.append(EvalImage(img["id"], img["file_name"], [self.descriptions[d].text for d in ids], list(ids),
                                 img.get("width"), img.get("height")))
        return out


def _field(path: str | None, where: str, message: str) -> DataError:
    return DataError(message, path=path, field=where)


def parse_gt(obj: Any, path: str | None = None, *, skip_categories: bool = False) -> OmniLabelGT:
    """Check an OmniLabel ground-truth document and index it."""
    with no_gc():
        return _parse_gt(obj, path, skip_categories)


def _id(path: str | None, where: str, value: Any) -> int:
    """``value`` as an integer id, or a DataError naming the field."""
    problem = id_problem(value)
    if problem:
        raise _field(path, where, problem)
    return value


def _ids(path: str | None, where: str, values: Any) -> list[int]:
    """A list of integer ids (one pass over the types; the first bad one named)."""
    if not isinstance(values, list):
        raise _field(path, where, f"expected a list of integer ids, got {values!r}")
    if not (all_instances(values, {int}) and (not values or (min(values) >= INT64_MIN and max(values) <= INT64_MAX))):
        for k, v in enumerate(values):
            _id(path, f"{where}[{k}]", v)
    return values


def _parse_gt(obj: Any, path: str | None, skip_categories: bool) -> OmniLabelGT:
    if not isinstance(obj, dict):
        raise DataError("expected a JSON object with images, descriptions and annotations", path=path)
    for key in ("images", "descriptions", "annotations"):
        if not isinstance(obj.get(key), list):
            raise _field(path, key, "missing or not a list (the validation ground truth has all three)")
    images: list[dict[str, Any]] = []
    seen_images: set[int] = set()
    for i, img in enumerate(obj["images"]):
        if not isinstance(img, dict) or "id" not in img:
            raise _field(path, f"images[{i}].id", "missing")
        _id(path, f"images[{i}].id", img["id"])
        if not isinstance(img.get("file_name"), str):
            raise _field(path, f"images[{i}].file_name", "missing or not a string")
        if img["id"] in seen_images:
            raise _field(path, f"images[{i}].id", f"image id {img['id']} appears twice")
        seen_images.add(img["id"])
        images.append({"id": img["id"], "file_name": img["file_name"], "width": img.get("width"),
                       "height": img.get("height")})

    descriptions: dict[int, Description] = {}
    labelspace: dict[int, list[int]] = {}
    for i, d in enumerate(obj["descriptions"]):
        where = f"descriptions[{i}]"
        if not isinstance(d, dict) or "id" not in d:
            raise _field(path, f"{where}.id", "missing")
        _id(path, f"{where}.id", d["id"])
        if "text" in d and not isinstance(d["text"], str):
            raise _field(path, f"{where}.text", f"expected a string, got {d['text']!r}")
        if not isinstance(d.get("text"), str) or not d["text"].split():
            raise _field(path, f"{where}.text", "missing or empty")
        if problem := prompt_problem(d["text"]):
            raise _field(path, f"{where}.text", f"{problem}: give the description a text")
        info = d.get("anno_info")
        if not isinstance(info, dict) or "type" not in info:
            raise _field(path, f"{where}.anno_info.type", "missing (object_description or a category type)")
        if not isinstance(info["type"], str):
            raise _field(path, f"{where}.anno_info.type", f"expected a string (object_description or a category "
                         f"type), got {info['type']!r}")
        if d["id"] in descriptions:
            raise _field(path, f"{where}.id", f"description id {d['id']} appears twice")
        if "image_ids" not in d:
            raise _field(path, f"{where}.image_ids", "missing")
        image_ids = _ids(path, f"{where}.image_ids", d["image_ids"])
        kind = "D" if info["type"] == TYPE_DESCRIPTION else "C"
        descriptions[d["id"]] = Description(d["id"], d["text"], kind)
        if skip_categories and kind == "C":
            continue
        for image_id in image_ids:
            space = labelspace.setdefault(image_id, [])
            if d["id"] in space:
                raise _field(path, f"{where}.image_ids", f"image {image_id} is listed twice")
            space.append(d["id"])

    gt = OmniLabelGT(path, images, descriptions, labelspace, *_annotation_rows(obj["annotations"], path),
                     skip_categories=skip_categories)
    _check_described(gt, obj["annotations"], seen_images)
    gt.notes += _unlisted_images(obj, seen_images)
    if skip_categories:
        gt.notes.append("plain categories left out (--skip-categories): AP-categ and AP are undefined")
    return gt


def _check_described(gt: OmniLabelGT, anns: list[Any], images: set[int]) -> None:
    """Every description id of the annotations (checked by now, one box row each) on an image of ``images``
    is one of the descriptions. A box of no description belongs to no (image, description) pair: left out,
    it would change the scores without a word (the toolkit's lookup drops it so). Those on an image not
    listed are left out whatever they name (:func:`_unlisted_images`)."""
    known = IdIndex(np.fromiter(gt.descriptions, dtype=np.int64, count=len(gt.descriptions)))
    listed = IdIndex(np.fromiter(images, dtype=np.int64, count=len(images)))
    bad = np.flatnonzero((known.rank(gt.box_descr) < 0) & (listed.rank(gt.box_image) >= 0))
    if not len(bad):
        return
    first = int(bad[0])
    ends = np.cumsum(np.fromiter((len(a["description_ids"]) for a in anns), dtype=np.int64, count=len(anns)))
    entry = int(np.searchsorted(ends, first, side="right"))
    k = first - (int(ends[entry - 1]) if entry else 0)
    raise _field(gt.path, f"annotations[{entry}].description_ids[{k}]",
                 f"description {int(gt.box_descr[first])} is not in 'descriptions' ({len(bad)} annotation "
                 "description id(s) like this): correct the id, or add the description")


def _unlisted_images(obj: dict[str, Any], images: set[int]) -> list[str]:
    """A note counting the annotations and description image ids (checked by now) that name no image of
    ``images``.

    The toolkit reads each image's boxes and label space from ``images`` alone, so it leaves them out
    without a word, as if they were not there: a ground truth cut down to some images is scored as the
    toolkit scores it, and a mismatched one is told.
    """
    known = IdIndex(np.fromiter(images, dtype=np.int64, count=len(images)))
    said = []
    for key, name, ids_of in (("annotations", "annotation(s)", lambda e: [e["image_id"]]),
                              ("descriptions", "description image id(s)", lambda e: e["image_ids"])):
        lists = [ids_of(e) for e in obj[key]]
        counts = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
        flat = np.fromiter(chain.from_iterable(lists), dtype=np.int64, count=int(counts.sum()))
        bad = np.flatnonzero(known.rank(flat) < 0)
        if len(bad):
            first = int(bad[0])
            entry = int(np.searchsorted(np.cumsum(counts), first, side="right"))
            field = "image_id" if key == "annotations" else f"image_ids[{first - int(counts[:entry].sum())}]"
            said.append(f"{len(bad)} {name} (first: {key}[{entry}].{field} {int(flat[first])})")
    if not said:
        return []
    return [f"{' and '.join(said)} name no image of 'images'; left out of the scores, as the official toolkit "
            "leaves them"]


_ANNOTATION_KEYS = ("image_id", "bbox", "description_ids")


def _annotation_rows(anns: list[Any], path: str | None) -> tuple[np.ndarray, ...]:
    """The annotations as box rows (image, description, xywh, crowd, id 0), one per box and description; the
    ids, when given, integers.

    Checked by column (the validation set has tens of thousands); only when a check fails are the entries
    walked one by one, to name the first bad field.
    """
    cols = fast_columns(anns, _ANNOTATION_KEYS)
    if cols is not None and all_instances(cols["description_ids"], {list}):
        counts = np.fromiter(map(len, cols["description_ids"]), dtype=np.int64, count=len(anns))
        image = id_array(cols["image_id"])
        descr = id_array(list(chain.from_iterable(cols["description_ids"])))
        box = bbox_array(cols["bbox"])
        crowd_values = [a.get("iscrowd", 0) for a in anns]
        ids = id_array([a.get("id", i + 1) for i, a in enumerate(anns)])
        if image is not None and descr is not None and box is not None and ids is not None \
                and image.ndim == descr.ndim == ids.ndim == 1 and _boxes_ok(box) and _flags_ok(crowd_values):
            crowd = np.array(crowd_values, dtype=bool).reshape(-1)
            zero = ids == 0
            entry = np.repeat(np.arange(len(anns), dtype=np.int64), counts)
            return image[entry], descr, box[entry], crowd[entry], zero[entry]
    _check_annotations_slowly(anns, path)
    raise DataError("annotations could not be read (no single entry is at fault)", path=path, field="annotations")


def _flags_ok(values: list[Any]) -> bool:
    try:
        return set(values) <= {0, 1}  # True and False too
    except TypeError:  # a list or an object: unhashable
        return False


def _boxes_ok(box: np.ndarray) -> bool:
    return bool(np.isfinite(box).all() and (box[:, 2:] >= 0).all())


def _check_annotations_slowly(anns: list[Any], path: str | None) -> None:
    for i, a in enumerate(anns):
        where = f"annotations[{i}]"
        if not isinstance(a, dict):
            raise _field(path, where, f"expected an object, got {json_kind(a)}")
        for key in _ANNOTATION_KEYS:
            if key not in a:
                raise _field(path, f"{where}.{key}", "missing")
        for key in ("id", "image_id"):
            if key in a:
                _id(path, f"{where}.{key}", a[key])
        b = a["bbox"]
        if not isinstance(b, list) or len(b) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                               for v in b):
            raise _field(path, f"{where}.bbox", f"expected [x, y, width, height] (4 numbers), got {b!r}")
        if not all(is_finite(v) for v in b) or not _boxes_ok(np.array([b], dtype=np.float64)):
            raise _field(path, f"{where}.bbox", f"box {b!r} has a value that is not finite, or a negative width or "
                         "height (boxes are xywh)")
        _ids(path, f"{where}.description_ids", a["description_ids"])
        if a.get("iscrowd", 0) not in (0, 1):
            raise _field(path, f"{where}.iscrowd", f"expected 0 or 1, got {a['iscrowd']!r}")


def load_gt(path: str | Path, *, skip_categories: bool = False) -> OmniLabelGT:
    return parse_gt(read_json(path, "OmniLabel ground truth"), str(path), skip_categories=skip_categories)


# ---------------------------------------------------------------------------------------------
# predictions
# ---------------------------------------------------------------------------------------------


def parse_predictions(entries: Any, path: str | None = None) -> Predictions:
    """The toolkit's result list → Predictions (one row per box and description), each field checked.

    The checks run on whole columns; only when one fails are the entries walked one by one, to name it.
    """
    with no_gc():
        return _parse_predictions(entries, path)


def _parse_predictions(entries: Any, path: str | None) -> Predictions:
    if not isinstance(entries, list):
        raise DataError(f"expected a JSON list of predictions, got {json_kind(entries)}", path=path)
    cols = fast_columns(entries, ("image_id", "bbox", "description_ids", "scores"))
    if cols is not None and all_instances(cols["description_ids"], {list}) and all_instances(cols["scores"], {list}):
        counts = np.fromiter(map(len, cols["description_ids"]), dtype=np.int64, count=len(entries))
        same = np.array_equal(counts, np.fromiter(map(len, cols["scores"]), dtype=np.int64, count=len(entries)))
        label = id_array(list(chain.from_iterable(cols["description_ids"])))
        score = numeric_array(list(chain.from_iterable(cols["scores"])))
        image_id = id_array(cols["image_id"])
        bbox = bbox_array(cols["bbox"])
        if same and label is not None and score is not None and image_id is not None and bbox is not None \
                and label.ndim == score.ndim == image_id.ndim == 1 and boxes_and_scores_ok(bbox, score.astype(float)):
            if (counts == 1).all():  # one description per box: the common case, no copies
                return Predictions(image_id, label, score, bbox)
            entry = np.repeat(np.arange(len(entries), dtype=np.int64), counts)
            return Predictions(image_id[entry], label, score, bbox[entry], None, entry)
    _check_slowly(entries, path)
    raise DataError("predictions could not be read (no single entry is at fault)", path=path)


def _check_slowly(entries: list[Any], path: str | None) -> None:
    check = EntryChecker(path)
    for i, e in enumerate(entries):
        check.entry(i, e, ("image_id", "bbox", "description_ids", "scores"))
        check.int_id(i, e, "image_id")
        check.bbox(i, e)
        ids, scores = e["description_ids"], e["scores"]
        if not isinstance(ids, list) or not isinstance(scores, list):
            raise check.fail(i, "description_ids" if not isinstance(ids, list) else "scores", "expected a list", e)
        if len(ids) != len(scores):
            raise check.fail(i, "scores", f"{len(scores)} scores for {len(ids)} description ids", e)
        for k, (d, s) in enumerate(zip(ids, scores, strict=True)):
            problem = id_problem(d)
            if problem:
                raise check.fail(i, f"description_ids[{k}]", problem, e)
            check.score(i, e, f"scores[{k}]", s)


def load_predictions(path: str | Path) -> Predictions:
    return parse_predictions(read_json(path, "predictions"), str(path))


def prediction_entries(pred: Predictions):
    """Predictions → the toolkit's result entries (one per row)."""
    for i, b, d, s in zip(pred.image_id.tolist(), pred.bbox.tolist(), pred.label.tolist(), pred.score.tolist(),
                          strict=True):
        yield {"image_id": i, "bbox": b, "description_ids": [d], "scores": [s]}


def write_predictions(path: str | Path, pred: Predictions) -> None:
    write_json_list(path, prediction_entries(pred))


# ---------------------------------------------------------------------------------------------
# metric
# ---------------------------------------------------------------------------------------------


@dataclass
class Pairs:
    """The (image, description) pairs evaluated, in the toolkit's order (images by id, label-space order)."""

    image: np.ndarray
    descr: np.ndarray
    kind: np.ndarray  # "C", "Dp" or "Dn"
    words: np.ndarray
    images: IdIndex
    descrs: IdIndex
    keys: np.ndarray  # sorted (image rank, description rank) keys
    key_to_pair: np.ndarray

    def lookup_ranks(self, image_rank: np.ndarray, descr_rank: np.ndarray) -> np.ndarray:
        """Pair index of each (image rank, description rank), -1 where it is not a pair."""
        out = np.full(len(image_rank), -1, dtype=np.int64)
        if not len(self.keys):
            return out
        key = image_rank * len(self.descrs) + descr_rank
        pos = np.minimum(np.searchsorted(self.keys, key), len(self.keys) - 1)
        ok = (image_rank >= 0) & (descr_rank >= 0) & (self.keys[pos] == key)
        out[ok] = self.key_to_pair[pos[ok]]
        return out

    def lookup(self, image: np.ndarray, descr: np.ndarray) -> np.ndarray:
        """Pair index of each (image id, description id), -1 where it is not a pair."""
        return self.lookup_ranks(self.images.rank(image), self.descrs.rank(descr))


def build_pairs(gt: OmniLabelGT) -> Pairs:
    """Every (image, description) of the label spaces, typed C, Dp (refers to a box of that image,
    crowd or not) or Dn."""
    images = IdIndex(np.array([img["id"] for img in gt.images], dtype=np.int64))
    descrs = IdIndex(np.array(list(gt.descriptions), dtype=np.int64))
    img_list, descr_list = [], []
    for image_id in images.ids.tolist():
        for d in gt.labelspace.get(image_id, []):
            img_list.append(image_id)
            descr_list.append(d)
    image = np.array(img_list, dtype=np.int64)
    descr = np.array(descr_list, dtype=np.int64)
    key = images.rank(image) * len(descrs) + descrs.rank(descr)
    order = np.argsort(key, kind="stable")
    words = np.array([len(gt.descriptions[d].text.split()) for d in descr_list], dtype=np.int64)
    pairs = Pairs(image, descr, np.array([], dtype=object), words, images, descrs, key[order], order)
    positive = np.zeros(len(image), dtype=bool)
    p = pairs.lookup(gt.box_image, gt.box_descr)
    positive[p[p >= 0]] = True
    category = np.array([gt.descriptions[d].kind == "C" for d in descr_list], dtype=bool)
    pairs.kind = np.where(category, "C", np.where(positive, "Dp", "Dn")).astype(object)
    return pairs


def _outside_label_spaces(gt: OmniLabelGT, pairs: Pairs, unpaired: np.ndarray) -> list[str]:
    """A note on the boxes of a listed image that no (image, description) pair holds (``unpaired``): their
    description does not list that image in its ``image_ids``. They are left out, as the toolkit leaves
    them out; said, since a ground truth edited by hand may so lose boxes it means to score. Boxes of
    images not listed (noted at load) and plain categories left out by ``skip_categories`` are no part of it."""
    outside = unpaired & (pairs.images.rank(gt.box_image) >= 0)
    if gt.skip_categories:
        outside &= ~_categories(gt, pairs)[np.maximum(pairs.descrs.rank(gt.box_descr), 0)]
    if not outside.any():
        return []
    first = int(np.flatnonzero(outside)[0])
    return [f"{int(outside.sum())} ground-truth box(es) name a description whose image_ids leave out their image "
            f"(e.g. description {int(gt.box_descr[first])} on image {int(gt.box_image[first])}): no (image, "
            "description) pair holds them, so they were left out, as the official toolkit does"]


def _categories(gt: OmniLabelGT, pairs: Pairs) -> np.ndarray:
    """Whether each description (by rank) is a plain category."""
    return np.array([gt.descriptions[int(d)].kind == "C" for d in pairs.descrs.ids.tolist()], dtype=bool)


def evaluate(gt: OmniLabelGT, pred: Predictions, *, path: str | None = None,
             max_dets: int = coco_ap.MAX_DETS) -> EvalResult:
    """The official OmniLabel metrics for ``pred`` (unknown images or descriptions are errors)."""
    pairs = build_pairs(gt)
    n_pairs = len(pairs.image)
    image_rank = pairs.images.rank(pred.image_id)
    report_unknown(pred, "image_id", image_rank, "image", path)
    descr_rank = pairs.descrs.rank(pred.label)
    report_unknown(pred, "label", descr_rank, "description", path, field_name="description_ids")

    dt_pair = pairs.lookup_ranks(image_rank, descr_rank)
    inside = dt_pair >= 0
    outside = int(len(inside) - inside.sum())
    skipped = int((~inside & _categories(gt, pairs)[descr_rank]).sum()) if gt.skip_categories and outside else 0
    if outside:
        dt_pair, dt_score, dt_box = dt_pair[inside], pred.score[inside], pred.bbox[inside]
    else:
        dt_score, dt_box = pred.score, pred.bbox
    # Detections are matched in (pair, best first) order, ``index`` into the rows above; boxes stay put.
    by_score = np.argsort(-dt_score, kind="stable")
    index, _ = coco_ap.detection_order(dt_pair, dt_score, max_dets, score_order=by_score)
    # The pooled order is a stable score sort of the detections in pair order. When nothing was cut and
    # the input already came in pair order, that is the score order of the input: no second sort.
    if len(index) == len(dt_pair) and (len(dt_pair) < 2 or bool((np.diff(dt_pair) >= 0).all())):
        position = np.empty(len(index), dtype=np.int64)
        position[index] = np.arange(len(index))
        pooled = position[by_score]
    else:
        pooled = np.argsort(-dt_score[index], kind="stable")
    dt_pair = dt_pair[index]
    dt_area = np.maximum(0, dt_box[:, 2] * dt_box[:, 3])

    g_pair = pairs.lookup(gt.box_image, gt.box_descr)
    g_keep = g_pair >= 0
    outside_gt = _outside_label_spaces(gt, pairs, ~g_keep)
    g_pair = g_pair[g_keep]
    g_box, g_crowd, g_zero = gt.box_xywh[g_keep], gt.box_crowd[g_keep], gt.box_zero_id[g_keep]
    g_area = np.maximum(0, g_box[:, 2] * g_box[:, 3])
    g_ignore = g_crowd | (g_area < coco_ap.AREA_ALL[0]) | (g_area > coco_ap.AREA_ALL[1])
    g_order = np.lexsort((g_ignore, g_pair))
    g_pair, g_box, g_crowd, g_zero, g_ignore = (a[g_order] for a in (g_pair, g_box, g_crowd, g_zero, g_ignore))

    matches = coco_ap.match_pairs(dt_pair, dt_box, dt_area, g_pair, g_box, g_crowd, g_ignore, g_zero, n_pairs,
                                  dt_rows=index)

    # Pooled over pairs: one stable sort by score; each group is a subsequence of it. Only detections
    # matched or ignored somewhere are carried; all others are false positives, counted by position.
    where_pooled = np.empty(len(pooled), dtype=np.int64)
    where_pooled[pooled] = np.arange(len(pooled))
    by_pool = np.argsort(where_pooled[matches.index], kind="stable")
    flagged = matches.index[by_pool]
    flag_matched, flag_ignored = matches.matched[:, by_pool], matches.ignored[:, by_pool]
    sorted_pair = dt_pair[pooled]
    pair_has_gt = np.bincount(g_pair, minlength=n_pairs) > 0
    pair_has_dt = np.bincount(dt_pair, minlength=n_pairs) > 0
    regular_gt = np.bincount(g_pair[~g_ignore], minlength=n_pairs)
    curves: dict[str, coco_ap.Curve] = {}
    for name, kinds, (lo, hi) in GROUPS:
        in_group = np.isin(pairs.kind, kinds) & (pairs.words >= lo) & (pairs.words <= hi)
        has_pairs = bool((in_group & (pair_has_gt | pair_has_dt)).any())
        rank = np.cumsum(in_group[sorted_pair]) - 1  # position within the group's pooled sequence
        mine = in_group[dt_pair[flagged]]
        curves[name] = coco_ap.sparse_curve(
            int(rank[-1] + 1) if len(rank) else 0, rank[where_pooled[flagged[mine]]], flag_matched[:, mine],
            flag_ignored[:, mine], int(regular_gt[in_group].sum()), has_pairs=has_pairs)
    return _result(gt, curves, outside, n_pairs, outside_gt, skipped)


def _result(gt: OmniLabelGT, curves: dict[str, coco_ap.Curve], outside: int, n_pairs: int,
            gt_notes: list[str], skipped: int = 0) -> EvalResult:
    """The metrics and notes; ``skipped``: of the ``outside`` predicted rows, those of a plain category
    left out by ``skip_categories``."""
    ap = {name: coco_ap.ap(c) for name, c in curves.items()}
    categ, descr = curves["categ"], curves["descr"]
    if categ.n_gt > 0 and descr.n_gt > 0:
        hm = (2 * ap["categ"] * ap["descr"]) / (ap["categ"] + ap["descr"] + 1e-5)
    else:
        hm = -1
    metrics = {
        "AP": metric(hm),
        "AP-categ": metric(ap["categ"]),
        "AP-descr": metric(ap["descr"]),
        "AP-descr-pos": metric(ap["descr-pos"]),
        "AP-descr-S": metric(ap["descr-S"]),
        "AP-descr-M": metric(ap["descr-M"]),
        "AP-descr-L": metric(ap["descr-L"]),
        "AP50-descr": metric(coco_ap.ap(descr, .5)),
        "AP75-descr": metric(coco_ap.ap(descr, .75)),
        "AP50-categ": metric(coco_ap.ap(categ, .5)),
        "AP75-categ": metric(coco_ap.ap(categ, .75)),
        "AR-descr": metric(coco_ap.ar(descr)),
        "AR-categ": metric(coco_ap.ar(categ)),
    }
    num_gt = {name: c.n_gt for name, c in curves.items()}
    notes = list(gt.notes) + gt_notes
    if outside > skipped:
        notes.append(f"{outside - skipped} predicted (box, description) rows name a description outside their "
                     "image's label space and were ignored, as the official toolkit does")
    if skipped:
        notes.append(f"{skipped} predicted (box, description) rows name a plain category and were left out by "
                     "--skip-categories")
    return EvalResult(NAME, metrics, {"num_gt": num_gt, "pairs": n_pairs}, notes)
