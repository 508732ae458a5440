"""OVDEval: COCO-style subsets with hard negatives, and the NMS-AP metric.

Each subset is one COCO json (negation, celebrity, color, landmark, logo, material, position,
relationship, ...) whose images carry ``text`` (the positive labels) and ``neg_text`` (hard
negatives); the subset's name is its file name up to the first dot, as in the official script.
An image is prompted with its ``text`` then ``neg_text`` (repeats dropped), except in the subsets
celebrity, landmark, logo and coco, which prompt every category of the subset. Each label maps to
the category of that name.

NMS-AP, as the official ``eval.py``: in each image, for every ground-truth box, the predictions of
any label whose IoU with it is above 0.5 are ranked by score (numpy's default argsort, reversed) and
all but the first are deleted — unless another box keeps that prediction as its first. The
remaining predictions are scored with standard COCO bbox AP. A hard-negative label on the same box
as the right one therefore costs nothing when it scores lower, and costs the right prediction when
it scores higher.

Annotation ids are renumbered 1..N, as D³'s are: pycocotools counts a match to id 0 as none and indexes
boxes by id, so ids that are 0 or repeated would lower the scores (a note says when they were); unique
non-zero ids score the same whatever their values.

Predictions, the benchmark's result format: a COCO result list per subset {image_id, category_id,
bbox xywh, score}: one file for one subset, or a folder of ``<subset>.json`` for several.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from reallod.errors import ConfigError, DataError
from reallod.eval.coco_tools import coco_evaluate
from reallod.eval.common import (
    EvalImage,
    EvalResult,
    Predictions,
    check_known,
    coco_results,
    id_problem,
    is_finite,
    is_json_name,
    json_stem,
    prompt_problem,
    read_coco_results,
    read_json,
    write_coco_results,
)

NAME = "ovdeval"
ALL_CATEGORY_SUBSETS = frozenset({"coco", "celebrity", "logo", "landmark"})
NMS_IOU = 0.5


@dataclass
class Subset:
    name: str
    path: str
    gt: dict[str, Any]
    images: list[EvalImage]
    notes: list[str] = field(default_factory=list)


@dataclass
class OVDEvalBenchmark:
    subsets: list[Subset]

    def eval_images(self) -> list[EvalImage]:
        return [img for s in self.subsets for img in s.images]


def subset_name(path: str | Path) -> str:
    return Path(path).name.split(".")[0]


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def parse_subset(obj: Any, path: str, part: int = 0, name: str | None = None) -> Subset:
    """Check one subset's COCO json and list its images with their prompts."""
    name = name or subset_name(path)
    if not isinstance(obj, dict):
        raise DataError("expected a COCO-style JSON object", path=path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(obj.get(key), list):
            raise DataError("missing or not a list", path=path, field=key)
    by_name: dict[str, int] = {}
    cat_ids: dict[int, int] = {}  # id → index of the category holding it
    for i, c in enumerate(obj["categories"]):
        if not isinstance(c, dict) or "id" not in c or not isinstance(c.get("name"), str):
            raise DataError("expected {id, name}", path=path, field=f"categories[{i}]")
        _id(path, f"categories[{i}].id", c["id"])
        if (first := cat_ids.setdefault(c["id"], i)) != i:
            raise DataError(f"category id {c['id']} appears twice (categories[{first}] has it too): give each "
                            "category its own id", path=path, field=f"categories[{i}].id")
        if problem := prompt_problem(c["name"]):
            raise DataError(f"{problem}: give the category a name", path=path, field=f"categories[{i}].name")
        by_name[c["name"]] = c["id"]  # a repeated name maps to its last id, as the official script's dict
    every = list(dict.fromkeys(c["name"] for c in obj["categories"]))
    images = []
    seen: set[int] = set()
    for i, img in enumerate(obj["images"]):
        where = f"images[{i}]"
        if not isinstance(img, dict) or "id" not in img:
            raise DataError("missing", path=path, field=f"{where}.id")
        _id(path, f"{where}.id", img["id"])
        if not isinstance(img.get("file_name"), str):
            raise DataError("missing or not a string", path=path, field=f"{where}.file_name")
        if img["id"] in seen:
            raise DataError(f"image id {img['id']} appears twice", path=path, field=f"{where}.id")
        seen.add(img["id"])
        if name in ALL_CATEGORY_SUBSETS:
            texts = every
        else:
            for key in ("text", "neg_text"):
                if not _strings(img.get(key, [])):
                    raise DataError("expected a list of label names", path=path, field=f"{where}.{key}")
                for k, t in enumerate(img.get(key, [])):
                    if t not in by_name:
                        raise DataError(f"label {t!r} is not the name of a category of this subset", path=path,
                                        field=f"{where}.{key}[{k}]")
            texts = list(dict.fromkeys(img.get("text", []) + img.get("neg_text", [])))
        images.append(EvalImage(img["id"], img["file_name"], list(texts), [by_name[t] for t in texts],
                                img.get("width"), img.get("height"), part, name))
    for i, a in enumerate(obj["annotations"]):
        _check_annotation(path, i, a)
    annotations, notes = _renumbered(path, obj["annotations"])
    unscored = [i for i, a in enumerate(obj["annotations"]) if a["category_id"] not in cat_ids or a["image_id"] not in seen]
    if unscored:  # pycocotools evaluates the listed images and categories only, as the official script
        notes.append(f"{Path(path).name}: {len(unscored)} annotation(s) of a category or image the file does not "
                     f"list, not scored (as in the official script), e.g. annotations[{unscored[0]}]")
    return Subset(name, path, {**obj, "annotations": annotations}, images, notes)


def _renumbered(path: str, anns: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Copies of the annotations with ids 1..N in file order, and a note when that changes the scores.

    pycocotools counts a match to annotation id 0 as no match, and indexes boxes by id (of two boxes sharing
    one, it scores the last twice); the official script so scores such a file lower. Unique non-zero ids
    give the same scores whatever their values: for them, renumbering changes nothing.
    """
    given = [a["id"] for a in anns if "id" in a]
    out = [{**a, "id": k + 1} for k, a in enumerate(anns)]
    if not given or (len(given) == len(anns) and 0 not in given and len(set(given)) == len(given)):
        return out, []
    counts = {"zero": given.count(0), "repeated": len(given) - len(set(given)), "missing": len(anns) - len(given)}
    why = ", ".join(f"{n} {what}" for what, n in counts.items() if n)
    return out, [f"{Path(path).name}: annotation ids renumbered 1..{len(anns)}, as pycocotools needs them ({why}): "
                 "the official script would count a match to id 0 as none, score one box of a repeated id in place "
                 "of the others, or stop"]


def _id(path: str, where: str, value: Any) -> None:
    problem = id_problem(value)
    if problem:
        raise DataError(problem, path=path, field=where)


def _check_annotation(path: str, i: int, a: Any) -> None:
    """One ground-truth box as pycocotools reads it: integer ids, a finite xywh box, iscrowd 0 or 1, a
    finite non-negative area (pycocotools compares it with the area ranges)."""
    where = f"annotations[{i}]"
    if not isinstance(a, dict) or "image_id" not in a or "category_id" not in a:
        raise DataError("expected {image_id, category_id, bbox}", path=path, field=where)
    for key in ("id", "image_id", "category_id"):
        if key in a:
            _id(path, f"{where}.{key}", a[key])
    b = a.get("bbox")
    if not isinstance(b, list) or len(b) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                           for v in b):
        raise DataError(f"expected [x, y, width, height], got {b!r}", path=path, field=f"{where}.bbox")
    if not all(is_finite(v) for v in b) or b[2] < 0 or b[3] < 0:
        raise DataError(f"box {b!r} has a value that is not finite, or a negative width or height (boxes are xywh)",
                        path=path, field=f"{where}.bbox")
    if a.get("iscrowd", 0) not in (0, 1):
        raise DataError(f"expected 0 or 1, got {a['iscrowd']!r}", path=path, field=f"{where}.iscrowd")
    area = a.get("area", 0)  # without one, width × height
    if not (isinstance(area, (int, float)) and not isinstance(area, bool) and is_finite(area) and area >= 0):
        raise DataError(f"expected a finite number >= 0 (the box's area, for COCO's small / medium / large), got "
                        f"{area!r}: correct it, or leave it out for width × height", path=path, field=f"{where}.area")


def subset_files(annotations: str | Path, subset: str | None = None) -> list[Path]:
    """The subset jsons to evaluate: one file, or a folder's ``*.json`` and ``*.json.gz`` (all, or only
    ``subset``)."""
    p = Path(annotations)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if is_json_name(f) and f.is_file())
        if subset is not None:
            chosen = [f for f in files if subset_name(f) == subset]
            if not chosen:
                raise DataError(f"no subset {subset!r} here (found: {', '.join(subset_name(f) for f in files) or 'none'})",
                                path=str(p))
            files = chosen
        if not files:
            raise DataError("no subset json files in this folder", path=str(p))
    else:
        if subset is not None and subset_name(p) != subset:
            raise DataError(f"this file is subset {subset_name(p)!r}, not {subset!r}", path=str(p))
        files = [p]
    seen: dict[str, Path] = {}
    for f in files:
        if (other := seen.setdefault(subset_name(f), f)) != f:
            raise DataError(f"{other.name} and {f.name} are both subset {subset_name(f)!r} (its name is the file's "
                            "up to the first dot): keep one of them", path=str(p))
    return files


def load(annotations: str | Path, subset: str | None = None) -> OVDEvalBenchmark:
    """One subset json, or a folder of them (every ``*.json`` and ``*.json.gz``, or only ``subset``)."""
    return OVDEvalBenchmark([parse_subset(read_json(f, "OVDEval subset"), str(f), k, subset_name(f))
                             for k, f in enumerate(subset_files(annotations, subset))])


# ---------------------------------------------------------------------------------------------
# predictions
# ---------------------------------------------------------------------------------------------


def load_predictions(path: str | Path, bench: OVDEvalBenchmark) -> Predictions:
    """A result list (one subset) or a folder with ``<subset>.json`` for each subset."""
    p = Path(path)
    if len(bench.subsets) == 1 and not p.is_dir():
        return read_coco_results(p)
    if not p.is_dir():
        raise DataError(f"{len(bench.subsets)} subsets are evaluated: give a folder with one <subset>.json each",
                        path=str(p))
    parts = []
    for k, s in enumerate(bench.subsets):
        f = p / f"{s.name}.json"
        if not f.is_file():
            raise DataError(f"no predictions for subset {s.name!r} (expected {f.name})", path=str(p))
        parts.append(read_coco_results(f, k))
    return _concat_keep_entry(parts)


def _concat_keep_entry(parts: list[Predictions]) -> Predictions:
    out = Predictions.concat(parts)
    out.entry = np.concatenate([q.entry for q in parts]) if parts else out.entry
    return out


def prediction_files(path: str | Path, names: list[str]) -> list[Path]:
    """Where predictions of these subsets are written: ``path`` itself when it names a JSON file (one
    subset only), else ``path/<subset>.json`` for each."""
    p = Path(path)
    if is_json_name(p):
        if len(names) != 1:
            raise ConfigError(f"--out {p}: {len(names)} subsets are evaluated, one <subset>.json each: give a folder "
                              f"(a name without .json), such as {json_stem(p)}")
        return [p]
    return [p / f"{name}.json" for name in names]


def write_predictions(path: str | Path, bench: OVDEvalBenchmark, pred: Predictions) -> list[Path]:
    """One file (a ``.json`` name, one subset), or ``<subset>.json`` for each subset in the folder ``path``."""
    targets = prediction_files(path, [s.name for s in bench.subsets])
    for k, target in enumerate(targets):
        write_coco_results(target, pred.take(pred.part == k) if len(targets) > 1 else pred)
    return targets


# ---------------------------------------------------------------------------------------------
# NMS-AP
# ---------------------------------------------------------------------------------------------


def iou_official(gt_box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xywh box with many, as the official script computes it (0 where the union is 0)."""
    x1, y1, w1, h1 = gt_box
    x2, y2, w2, h2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    inter = (np.maximum(0, np.minimum(x1 + w1, x2 + w2) - np.maximum(x1, x2))
             * np.maximum(0, np.minimum(y1 + h1, y2 + h2) - np.maximum(y1, y2)))
    union = w1 * h1 + w2 * h2 - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union == 0, 0, inter / union)


def nms_keep(gt_boxes: dict[int, np.ndarray], image_id: np.ndarray, bbox: np.ndarray, score: np.ndarray,
             iou_threshold: float = NMS_IOU) -> np.ndarray:
    """Mask of the predictions NMS-AP keeps: per ground-truth box, only the best overlapping prediction."""
    keep = np.ones(len(image_id), dtype=bool)
    if not len(image_id):
        return keep
    order = np.argsort(image_id, kind="stable")
    bounds = np.flatnonzero(np.r_[True, image_id[order][1:] != image_id[order][:-1], True])
    for lo, hi in pairwise(bounds):
        rows = order[lo:hi]  # this image's predictions, in file order
        gts = gt_boxes.get(int(image_id[rows[0]]))
        if gts is None or not len(gts):
            continue
        boxes, scores = bbox[rows], score[rows]
        kept: set[int] = set()
        removed: list[int] = []
        for g in gts:
            hits = np.where(iou_official(g, boxes) > iou_threshold)[0]
            if len(hits):
                ranked = hits[np.argsort(scores[hits])[::-1]]
                kept.add(int(ranked[0]))
                removed.extend(int(r) for r in ranked[1:])
        gone = [r for r in removed if r not in kept]
        keep[rows[gone]] = False
    return keep


def evaluate(bench: OVDEvalBenchmark, pred: Predictions, *, path: str | None = None,
             backend: str = "pycocotools") -> EvalResult:
    """NMS-AP (with AP50 / AP75) per subset, and their mean."""
    metrics: dict[str, float | None] = {}
    details: dict[str, Any] = {"subsets": {}}
    aps = []
    for k, s in enumerate(bench.subsets):
        part = pred.take(pred.part == k)
        where = str(Path(path) / f"{s.name}.json") if path is not None and Path(path).is_dir() else path
        check_known(part, "image_id", np.array([img.image_id for img in s.images]), f"{s.name} image", where)
        check_known(part, "label", np.array([c["id"] for c in s.gt["categories"]]), f"{s.name} category", where,
                    field_name="category_id")
        gt_boxes: dict[int, list] = {}
        for a in s.gt["annotations"]:
            gt_boxes.setdefault(a["image_id"], []).append(a["bbox"])
        kept = part.take(nms_keep({i: np.asarray(b, dtype=np.float64) for i, b in gt_boxes.items()},
                                  part.image_id, part.bbox, part.score))
        scores = coco_evaluate(s.gt, coco_results(kept), backend)
        metrics.update(scores.ap(s.name))
        details["subsets"][s.name] = {"predictions": len(part), "after_nms": len(kept)}
        if metrics[f"{s.name}/AP"] is not None:
            aps.append(metrics[f"{s.name}/AP"])
    metrics["AP"] = float(np.mean(aps)) if aps else None
    notes = [f"NMS-AP over {len(bench.subsets)} subset(s): {', '.join(s.name for s in bench.subsets)}"]
    return EvalResult(NAME, {"AP": metrics.pop("AP"), **metrics}, details,
                      notes + [note for s in bench.subsets for note in s.notes])
