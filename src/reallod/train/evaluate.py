"""Detection quality on held-out Real-Data, for the periodic evaluation and the learning test.

Every (image, expression) pair is scored COCO-style as its own "image" with one category, and
precision/recall are pooled over all pairs (OmniLabel's way, DESIGN §5): a positive expression's
ground truth is its pair's boxes; a negative expression has none, so any box it gets is a false
positive. A detector that finds shapes but ignores the words therefore scores low. Inference runs
one expression per forward pass (the benchmarks' "parallel" mode) through
:mod:`reallod.model.inference`.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from reallod.data.records import Record
from reallod.errors import DataError
from reallod.train.dataset import DataFile, index_file
from reallod.train.records import clean_record

METRICS = ("ap50", "ap", "ap50_pos", "ap_pos")


@dataclass(frozen=True)
class EvalQuery:
    image: str  # path
    expression: str
    boxes: np.ndarray  # (k, 4) xyxy pixels; empty for a negative expression


def eval_queries(records: Sequence[tuple[Record, str]], *, sources: Sequence[str] = ("vlm_short",),
                 positives_per_pair: int = 1, negatives_per_image: int = 3) -> list[EvalQuery]:
    """Deterministic queries: each pair's first positives, and the image's first negatives not named positively."""
    out = []
    for record, path in records:
        pairs = [p for s in sources for p in record.pairs.get(s, [])]
        positives: dict[str, list] = {}
        for p in pairs:
            for e in p.positive_expressions[:positives_per_pair]:
                positives.setdefault(e, []).extend(p.bboxes)
        named = {e.lower() for p in pairs for e in p.positive_expressions}
        negatives: list[str] = []
        for p in pairs:
            for e in p.negative_expressions:
                if e.lower() not in named and e not in negatives:
                    negatives.append(e)
        out += [EvalQuery(path, e, np.asarray(b, dtype=np.float64).reshape(-1, 4)) for e, b in positives.items()]
        out += [EvalQuery(path, e, np.zeros((0, 4))) for e in negatives[:negatives_per_image]]
    return out


def pooled_ap(queries: Sequence[EvalQuery], detections: Sequence[tuple[np.ndarray, np.ndarray]],
              max_dets: int = 100) -> dict[str, float]:
    """AP (IoU .50:.95) and AP50 pooled over all queries, and over positive queries only (``*_pos``)."""
    out: dict[str, float] = {}
    for suffix, keep in (("", lambda q: True), ("_pos", lambda q: len(q.boxes) > 0)):
        idx = [i for i, q in enumerate(queries) if keep(q)]
        ap, ap50 = _coco_ap([queries[i] for i in idx], [detections[i] for i in idx], max_dets)
        out["ap" + suffix], out["ap50" + suffix] = ap, ap50
    return out


def _coco_ap(queries: Sequence[EvalQuery], detections: Sequence[tuple[np.ndarray, np.ndarray]],
             max_dets: int) -> tuple[float, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for i, (q, (boxes, scores)) in enumerate(zip(queries, detections, strict=True), start=1):
        images.append({"id": i})
        for b in q.boxes:
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": 1, "iscrowd": 0,
                                "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h})
        order = np.argsort(-np.asarray(scores), kind="stable")[:max_dets]
        for k in order:
            b = boxes[k]
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            results.append({"id": len(results) + 1, "image_id": i, "category_id": 1, "iscrowd": 0,
                            "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h, "score": float(scores[k])})
    if not annotations:
        return float("nan"), float("nan")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "query"}]}
        gt.createIndex()
        dt = COCO()
        dt.dataset = {"images": images, "annotations": results, "categories": [{"id": 1, "name": "query"}]}
        dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


def detect_queries(detector: Any, queries: Sequence[EvalQuery], *, batch_size: int = 8, topk: int = 100
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Boxes (xyxy pixels) and scores for every query, one image at a time, expressions batched."""
    from PIL import Image

    from reallod.model.inference import InferenceOptions, detect

    opts = InferenceOptions(mode="parallel", batch_size=batch_size, topk=topk)
    by_image: dict[str, list[int]] = {}
    for i, q in enumerate(queries):
        by_image.setdefault(q.image, []).append(i)
    out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(queries)
    for path, idx in by_image.items():
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except (OSError, ValueError) as e:
            raise DataError(f"evaluation image cannot be read ({e})", path=path) from None
        det = detect(detector, image, [queries[i].expression for i in idx], opts)
        for j, i in enumerate(idx):
            sub = det.for_expression(j)
            out[i] = (sub.xyxy.astype(np.float64), sub.scores.astype(np.float64))
    return [o if o is not None else (np.zeros((0, 4)), np.zeros(0)) for o in out]


def load_eval_records(path: str | Path, images: str | Path, max_images: int | None = None
                      ) -> list[tuple[Record, str]]:
    """Records of an evaluation file (cleaned as for training), with their image paths."""
    fidx = index_file(DataFile(str(path), str(images)))
    out = []
    for i in range(len(fidx) if max_images is None else min(max_images, len(fidx))):
        record, _ = clean_record(orjson.loads(fidx.read(i)))
        if record is not None:
            out.append((record, str(Path(images) / record.filename)))
    return out
