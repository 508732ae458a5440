"""The OmniLabel metric at the scale of OmniLabel val: ours against a straightforward per-pair pycocotools
evaluator, in one run, on the same predictions, with identical numbers required.

The synthetic set mimics OmniLabel val: about 12k images, 20 descriptions per image (a quarter of them
plain categories, the free-form ones 1–14 words, about a third referring to no box of the image), a few
boxes per image, each referring to one to three descriptions, and 100 predicted boxes for every
(image, description) pair (jittered copies of the right boxes plus random ones).

Both sides start from the same list of prediction dicts (the toolkit's result format, as read from a
JSON file; parsing the file is the same for both and is not timed) and the same ground-truth dict.
The reference (``tests/eval/omnilabel_reference.py``) runs pycocotools' ``computeIoU`` and
``evaluateImg`` on every pair, for the area range "all" only, then pools per group; it holds a Python
dict per predicted box, so the head-to-head runs on a share of the images (``--images``, default
1,200 = a tenth of val: 24k pairs, 2.4M boxes). ``--full`` also times ours alone at full scale (12k
images, 24M boxes), starting from prediction columns, as ``reallod eval --model`` holds them.

    .venv/bin/python benchmarks/eval_metrics.py                 # head-to-head on 1,200 images
    .venv/bin/python benchmarks/eval_metrics.py --full          # + ours alone on 12,000 images
"""

from __future__ import annotations

import argparse
import copy
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.eval.omnilabel_reference import quiet, reference_evaluate  # noqa: E402

from reallod.eval import omnilabel as ol  # noqa: E402
from reallod.eval.common import Predictions  # noqa: E402

TARGET = 5.0
W, H = 640, 480


def make_gt(n_images: int, per_image: int = 20, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    images, descriptions, annotations = [], [], []
    d_id, a_id = 1, 1
    for i in range(n_images):
        image_id = 1000 + i
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": W, "height": H})
        ids = list(range(d_id, d_id + per_image))
        d_id += per_image
        kinds = rng.random(per_image) < 0.25
        words = rng.integers(1, 15, per_image)
        for d, is_cat, n in zip(ids, kinds, words, strict=True):
            descriptions.append({"id": d, "text": " ".join(["word"] * (1 if is_cat else int(n))),
                                 "image_ids": [image_id],
                                 "anno_info": {"type": "object_class" if is_cat else "object_description"}})
        referable = [d for d, dn in zip(ids, rng.random(per_image) < 0.35, strict=True) if not dn]
        for _ in range(int(rng.integers(2, 9))):
            x, y = rng.uniform(0, W * 0.8), rng.uniform(0, H * 0.8)
            box = [round(x, 2), round(y, 2), round(rng.uniform(10, W - x), 2), round(rng.uniform(10, H - y), 2)]
            refs = sorted(set(rng.choice(referable, size=int(rng.integers(1, 4))).tolist())) if referable else []
            if refs:
                annotations.append({"id": a_id, "image_id": image_id, "bbox": box, "description_ids": refs,
                                    "iscrowd": int(rng.random() < 0.01)})
                a_id += 1
    return {"images": images, "descriptions": descriptions, "annotations": annotations}


def make_predictions(gt: dict, per_pair: int = 100, seed: int = 1) -> Predictions:
    """100 boxes per pair: about a fifth jittered copies of the pair's boxes (or of other boxes), the rest random."""
    rng = np.random.default_rng(seed)
    boxes_of: dict[tuple[int, int], list] = {}
    image_boxes: dict[int, list] = {}
    for a in gt["annotations"]:
        image_boxes.setdefault(a["image_id"], []).append(a["bbox"])
        for d in a["description_ids"]:
            boxes_of.setdefault((a["image_id"], d), []).append(a["bbox"])
    pair_image, pair_descr, anchors = [], [], []
    for d in gt["descriptions"]:
        for image_id in d["image_ids"]:
            pair_image.append(image_id)
            pair_descr.append(d["id"])
            own = boxes_of.get((image_id, d["id"])) or image_boxes.get(image_id) or [[0, 0, W / 2, H / 2]]
            anchors.append(own[int(rng.integers(len(own)))])
    parts = []
    for lo in range(0, len(pair_image), 20_000):  # in chunks: bounded temporaries at full scale
        parts.append(_pair_boxes(rng, pair_image[lo:lo + 20_000], pair_descr[lo:lo + 20_000],
                                 anchors[lo:lo + 20_000], per_pair))
    return Predictions.concat(parts)


def _pair_boxes(rng: np.random.Generator, pair_image: list, pair_descr: list, anchors: list, per_pair: int
                ) -> Predictions:
    n = len(pair_image) * per_pair
    anchor = np.repeat(np.asarray(anchors, dtype=np.float64), per_pair, axis=0)
    jitter = anchor + rng.normal(0, 0.08, (n, 4)) * anchor[:, [2, 3, 2, 3]]
    xy = rng.uniform(0, [W * 0.9, H * 0.9], (n, 2))
    random = np.concatenate([xy, rng.uniform(0.02, 1, (n, 2)) * ([W, H] - xy)], axis=1)
    use_jitter = (rng.random(n) < 0.2)[:, None]
    box = np.where(use_jitter, jitter, random)
    box[:, 2:] = np.maximum(box[:, 2:], 1.0)
    score = np.where(use_jitter[:, 0], rng.beta(5, 2, n), rng.beta(2, 5, n)).round(4)
    return Predictions(np.repeat(pair_image, per_pair), np.repeat(pair_descr, per_pair), score, box.round(2))


def as_result_list(pred: Predictions) -> list[dict]:
    return list(ol.prediction_entries(pred))


def timed(fn, *args, **kwargs):
    """(CPU seconds, wall seconds, result): CPU time is the fairer clock on a machine shared with other jobs."""
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn(*args, **kwargs)
    return time.process_time() - cpu, time.perf_counter() - wall, out


def ours_from_dicts(gt_json: dict, results: list[dict]) -> dict:
    return ol.evaluate(ol.parse_gt(gt_json), ol.parse_predictions(results)).metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1200, help="images in the head-to-head run")
    ap.add_argument("--full", action="store_true", help="also time ours alone at 12,000 images (24M boxes)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each side; the best is reported")
    args = ap.parse_args()

    gt = make_gt(args.images)
    pred = make_predictions(gt)
    results = as_result_list(pred)
    n_pairs = sum(len(d["image_ids"]) for d in gt["descriptions"])
    print(f"head-to-head: {args.images:,} images, {n_pairs:,} pairs, {len(gt['annotations']):,} boxes, "
          f"{len(results):,} predicted boxes")

    runs_ours = [timed(ours_from_dicts, copy.deepcopy(gt), results) for _ in range(args.repeat)]
    runs_ref = [timed(quiet, reference_evaluate, copy.deepcopy(gt), results) for _ in range(args.repeat)]
    ours, ref = runs_ours[0][2], runs_ref[0][2]
    c_ours, w_ours = min(r[0] for r in runs_ours), min(r[1] for r in runs_ours)
    c_ref, w_ref = min(r[0] for r in runs_ref), min(r[1] for r in runs_ref)
    same = all((ours[k] if ours[k] is not None else -1.0) == v for k, v in ref.items()) \
        and all(r[2] == ours for r in runs_ours)
    print(f"  best of {args.repeat}          CPU s   wall s")
    print(f"  ours (from dicts):  {c_ours:7.2f}  {w_ours:7.2f}")
    print(f"  per-pair pycocotools:{c_ref:7.2f}  {w_ref:7.2f}")
    speedup = c_ref / c_ours
    print(f"  speed-up (CPU time): {speedup:.1f}x, wall: {w_ref / w_ours:.1f}x (target >= {TARGET:.0f}x); "
          f"identical numbers: {same}")
    for k in ("AP", "AP-categ", "AP-descr", "AP-descr-pos", "AP-descr-S", "AP-descr-M", "AP-descr-L"):
        print(f"    {k:13s} ours {ours[k]!r:22} reference {ref[k]!r}")
    del results

    if args.full:
        gt = make_gt(12_000, seed=2)
        pred = make_predictions(gt, seed=3)
        c_full, w_full, full = timed(lambda: ol.evaluate(ol.parse_gt(gt), pred).metrics)
        print(f"full scale, ours alone from prediction columns: 12,000 images, {len(pred):,} boxes: "
              f"{c_full:.1f} s CPU, {w_full:.1f} s wall (AP-descr {full['AP-descr']:.4f})")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:,.0f} MB")
    if not same or speedup < TARGET:
        sys.exit(1)


if __name__ == "__main__":
    main()
