"""Detection quality on held-out Real-Data, for the periodic evaluation and the learning test.

Every (image, expression) pair is scored COCO-style as its own "image" with one category, and
precision/recall are pooled over all pairs (OmniLabel's way): a positive expression's
ground truth is its pair's boxes; a negative expression has none, so any box it gets is a false
positive. A detector that finds shapes but ignores the words therefore scores low. Inference runs
one expression per forward pass (the benchmarks' "parallel" mode) through
:mod:`reallod.model.inference`, on images opened upright (EXIF) as everywhere else; the scoring is
:func:`reallod.eval.coco_tools.coco_evaluate`, the benchmarks' own COCO code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson

from reallod.data.images import DEFAULT_MAX_PIXELS, open_header, open_image, upright_size
from reallod.data.records import Record
from reallod.errors import DataError
from reallod.eval.coco_tools import coco_evaluate
from reallod.eval.common import xyxy_to_xywh
from reallod.model.detections import Detections
from reallod.train.dataset import MAX_PIXELS_HINT, DataFile, fits_record, index_file, skipped_summary
from reallod.train.targets import clean_record

if TYPE_CHECKING:
    from reallod.model.inference import Detector



@dataclass(frozen=True)
class EvalQuery:
    image: str  # path
    expression: str
    boxes: np.ndarray  # (k, 4) xyxy pixels of the record's size; empty for a negative expression
    size: tuple[int, int]  # the record's (width, height): the image may be a resized copy (fits_record)


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
        size = (record.width, record.height)
        out += [EvalQuery(path, e, np.asarray(b, dtype=np.float64).reshape(-1, 4), size)
                for e, b in positives.items()]
        out += [EvalQuery(path, e, np.zeros((0, 4)), size) for e in negatives[:negatives_per_image]]
    return out


def pooled_ap(queries: Sequence[EvalQuery], detections: Sequence[Detections], max_dets: int = 100
              ) -> dict[str, float]:
    """AP (IoU .50:.95) and AP50 pooled over all queries, and over positive queries only (``*_pos``)."""
    out: dict[str, float] = {}
    for suffix, keep in (("", lambda q: True), ("_pos", lambda q: len(q.boxes) > 0)):
        idx = [i for i, q in enumerate(queries) if keep(q)]
        ap, ap50 = _coco_ap([queries[i] for i in idx], [detections[i] for i in idx], max_dets)
        out["ap" + suffix], out["ap50" + suffix] = ap, ap50
    return out


def _coco_ap(queries: Sequence[EvalQuery], detections: Sequence[Detections], max_dets: int) -> tuple[float, float]:
    """Each query is one COCO image with one category: its boxes are the ground truth."""
    images, annotations, results = [], [], []
    for i, (q, det) in enumerate(zip(queries, detections, strict=True), start=1):
        images.append({"id": i})
        annotations += [{"image_id": i, "category_id": 1, "bbox": [float(v) for v in b]} for b in xyxy_to_xywh(q.boxes)]
        top = det.sorted()
        results += [{"image_id": i, "category_id": 1, "bbox": [float(v) for v in b], "score": float(score)}
                    for b, score in zip(xyxy_to_xywh(top.xyxy[:max_dets]), top.scores[:max_dets], strict=True)]
    if not annotations:
        return float("nan"), float("nan")
    scores = coco_evaluate({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "query"}]},
                           results, max_dets=max_dets)
    return float(scores.stats[0]), float(scores.stats[1])


def detect_queries(detector: Detector, queries: Sequence[EvalQuery], *, batch_size: int = 8, topk: int = 100,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Detections]:
    """The detections of every query, one image at a time, expressions batched, in the frame of the query's
    boxes (a resized copy's are scaled back; an image above ``max_pixels`` is an error: :func:`check_images`
    refuses it at setup)."""
    from reallod.model.inference import InferenceOptions, detect

    opts = InferenceOptions(mode="parallel", batch_size=batch_size, topk=topk)
    by_image: dict[str, list[int]] = {}
    for i, q in enumerate(queries):
        by_image.setdefault(q.image, []).append(i)
    out: list[Detections | None] = [None] * len(queries)
    for path, idx in by_image.items():
        image = open_image(path, max_pixels, hint=MAX_PIXELS_HINT)
        det = detect(detector, image, [queries[i].expression for i in idx], opts)
        (width, height), (rw, rh) = image.size, queries[idx[0]].size
        if (width, height) != (rw, rh):
            det.xyxy = det.xyxy * np.array([rw / width, rh / height] * 2, dtype=np.float32)
        for j, i in enumerate(idx):
            out[i] = det.for_expression(j)
    return [o if o is not None else Detections.empty([queries[i].expression]) for i, o in enumerate(out)]


def load_eval_records(path: str | Path, images: str | Path, max_images: int | None = None, *,
                      say: Callable[[str], None] | None = None) -> list[tuple[Record, str]]:
    """Records of an evaluation file (cleaned as for training), with their image paths. ``say`` is told
    what was left out, and where (the scores are over fewer images than the file's lines)."""
    if not str(images) or not Path(images).is_dir():  # named here: index_file would call it data.train[].images
        raise DataError("image root not found (eval.images)", path=str(images))
    fidx = index_file(DataFile(str(path), str(images)))
    if say is not None and (fidx.skipped or fidx.pairs_dropped):
        say("eval: " + skipped_summary([fidx]))
    out = []
    for i in range(len(fidx) if max_images is None else min(max_images, len(fidx))):
        record, _ = clean_record(orjson.loads(fidx.read(i)))
        if record is not None:
            out.append((record, str(Path(images) / record.filename)))
    return out


def check_images(records: Sequence[tuple[Record, str]], max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Refuse, naming the file, a held-out image that is missing, unreadable, truncated, neither of its
    record's size nor a resized copy (:func:`reallod.train.dataset.fits_record`, as training reads it) or
    larger than ``max_pixels`` (the evaluation would not decode it). Run at setup: the
    first evaluation, an epoch later, would otherwise be the one to find it, and end the run. Cheap: a
    PNG's chunks are walked without decoding, a JPEG is decoded at an eighth of its size (every byte of
    its data is still read), only other formats are decoded in full."""
    for record, path in records:
        try:
            with open_header(path) as im:
                size = upright_size(im)
                if size[0] * size[1] > max_pixels:  # before decoding any of it
                    raise DataError(f"held-out image is {size[0]}×{size[1]} = {size[0] * size[1]:,} pixels, above "
                                    f"the limit of {max_pixels:,} ({MAX_PIXELS_HINT})", path=path)
                if im.format == "PNG":
                    im.verify()  # to the end of the file, CRCs checked
                else:
                    im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))  # JPEG only; else no-op
                    im.load()  # a truncated file raises here
        except FileNotFoundError:
            raise DataError("held-out image not found (is eval.images the root of eval.file's filenames?)",
                            path=path) from None
        except (OSError, SyntaxError, ValueError) as e:  # not an image, truncated, damaged
            raise DataError(f"held-out image cannot be read ({type(e).__name__}: {e})", path=path) from None
        if not fits_record(size, record):
            raise DataError(f"held-out image is {size[0]}×{size[1]}, its record says {record.width}×{record.height} "
                            "(not a resized copy either: its boxes would land elsewhere)", path=path)
