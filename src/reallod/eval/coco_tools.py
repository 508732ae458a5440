"""Standard COCO bbox evaluation on in-memory ground truth and results (D³, OVDEval).

The benchmarks' official scripts run pycocotools' ``COCOeval`` on a COCO json and a result list;
this does the same without files and without the console chatter, on pycocotools (default, what the
official scripts use) or faster-coco-eval (a C++ port giving the same numbers, much faster on big
sets). An empty result list is scored as "no detections" (pycocotools' ``loadRes`` would crash on it).
"""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from reallod.errors import ConfigError
from reallod.eval.common import metric

Backend = Literal["pycocotools", "faster-coco-eval"]
BACKENDS: tuple[str, ...] = ("pycocotools", "faster-coco-eval")
STAT_NAMES = ("AP", "AP50", "AP75", "AP-small", "AP-medium", "AP-large",
              "AR1", "AR10", "AR100", "AR-small", "AR-medium", "AR-large")


@dataclass
class CocoScores:
    """``COCOeval.stats`` (12 numbers, -1 where undefined) and the precision array for per-category AP."""

    stats: np.ndarray
    precision: np.ndarray  # (T, R, K, A, M)
    cat_ids: list[int]
    cat_names: list[str]

    def ap(self, prefix: str) -> dict[str, float | None]:
        """``PREFIX/AP``, ``PREFIX/AP50`` and ``PREFIX/AP75`` (None where there is no ground truth)."""
        return {f"{prefix}/{name}": metric(self.stats[i]) for i, name in enumerate(STAT_NAMES[:3])}

    def category_ap(self) -> dict[int, float]:
        """AP per category (area all, 100 detections); NaN where the category has no ground truth."""
        aps = self.precision[:, :, :, 0, -1]
        out = {}
        for k, cat in enumerate(self.cat_ids):
            v = aps[:, :, k]
            v = v[v > -1]
            out[cat] = float(v.mean()) if len(v) else float("nan")
        return out


def check_backend(backend: str) -> None:
    """``--backend`` names a COCO evaluator that is installed: checked before a model run, not when scoring
    after it."""
    import importlib.util

    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend}: unknown COCO evaluator (use {' or '.join(BACKENDS)})")
    if importlib.util.find_spec(backend.replace("-", "_")) is None:
        raise ConfigError(f"--backend {backend}: not installed (pip install {backend}, or use the other backend)")


def complete_gt(gt: dict[str, Any]) -> dict[str, Any]:
    """A copy with the fields pycocotools needs: iscrowd (0), area (w × h) and id on every annotation."""
    out = dict(gt)
    out.setdefault("categories", [])
    anns = []
    for i, a in enumerate(gt.get("annotations", [])):
        a = dict(a)
        a.setdefault("iscrowd", 0)
        if "area" not in a:
            a["area"] = a["bbox"][2] * a["bbox"][3]
        a.setdefault("id", i + 1)
        anns.append(a)
    out["annotations"] = anns
    return out


def _results_like_load_res(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What pycocotools' ``loadRes`` makes of bbox results (area, id from 1, iscrowd 0), on copies."""
    out = []
    for i, r in enumerate(results):
        bb = r["bbox"]
        x1, x2, y1, y2 = bb[0], bb[0] + bb[2], bb[1], bb[1] + bb[3]
        out.append({**r, "segmentation": [[x1, y1, x1, y2, x2, y2, x2, y1]], "area": bb[2] * bb[3], "id": i + 1,
                    "iscrowd": 0})
    return out


def coco_evaluate(gt: dict[str, Any], results: list[dict[str, Any]], backend: str = "pycocotools", *,
                  max_dets: int = 100) -> CocoScores:
    """``COCOeval(gt, results, "bbox")``: evaluate, accumulate, summarize (``max_dets``: the largest
    of COCO's three detection limits, 100 as in the benchmarks)."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown COCO backend {backend!r} (use {' or '.join(BACKENDS)})")
    gt = complete_gt(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        if backend == "pycocotools":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            coco_gt = COCO()
            coco_gt.dataset = gt
            coco_gt.createIndex()
            coco_dt = COCO()
            coco_dt.dataset = {"info": copy.deepcopy(gt.get("info", {})), "images": list(gt["images"]),
                               "categories": copy.deepcopy(gt["categories"]),
                               "annotations": _results_like_load_res(results)}
            coco_dt.createIndex()
            ev = COCOeval(coco_gt, coco_dt, "bbox")
        else:
            from faster_coco_eval import COCO as FCOCO
            from faster_coco_eval import COCOeval_faster

            coco_gt = FCOCO(gt)
            coco_dt = FCOCO({"images": list(gt["images"]), "categories": copy.deepcopy(gt["categories"]),
                             "annotations": _results_like_load_res(results)})
            ev = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=lambda *a, **k: None)
        if max_dets != 100:
            ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    cat_ids = [int(c) for c in ev.params.catIds]
    names = {c["id"]: c.get("name", str(c["id"])) for c in gt["categories"]}
    return CocoScores(np.asarray(ev.stats, dtype=np.float64), np.asarray(ev.eval["precision"]), cat_ids,
                      [names.get(c, str(c)) for c in cat_ids])
