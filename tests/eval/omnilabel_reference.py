"""A straightforward OmniLabel evaluator on pycocotools, one (image, description) pair at a time.

This is the oracle the vectorised metric is checked against (tests) and timed against (benchmark):
pycocotools' own ``computeIoU`` and ``evaluateImg`` run on every pair of every label space, with the
pair as (image, category), and the per-pair results are pooled per group in plain Python/numpy, as
the OmniLabel protocol prescribes. Only the area range "all" is evaluated (the summary
uses nothing else), which keeps the oracle as fast as it can honestly be.
"""

from __future__ import annotations

import contextlib
import io
from collections import defaultdict

import numpy as np
from pycocotools.cocoeval import COCOeval

AREA_ALL = [0 ** 2, 1e5 ** 2]
GROUPS = {
    "categ": ({"C"}, 0, 100_000),
    "descr": ({"Dp", "Dn"}, 0, 100_000),
    "descr-pos": ({"Dp"}, 0, 100_000),
    "descr-S": ({"Dp", "Dn"}, 0, 3),
    "descr-M": ({"Dp", "Dn"}, 4, 8),
    "descr-L": ({"Dp", "Dn"}, 9, 100_000),
}


def reference_evaluate(gt_json: dict, results: list[dict], *, skip_categories: bool = False) -> dict:
    """Metric name → value (-1 where undefined), the same names as ``reallod.eval.omnilabel``."""
    descr_kind = {}
    descr_words = {}
    labelspace = defaultdict(list)
    for d in gt_json["descriptions"]:
        kind = "D" if d["anno_info"]["type"] == "object_description" else "C"
        descr_kind[d["id"]] = kind
        descr_words[d["id"]] = len(d["text"].split())
        if skip_categories and kind == "C":
            continue
        for image_id in d["image_ids"]:
            labelspace[image_id].append(d["id"])
    image_ids = sorted(img["id"] for img in gt_json["images"])

    ev = COCOeval(iouType="bbox")
    ev._gts, ev._dts = defaultdict(list), defaultdict(list)
    referred = defaultdict(set)
    for ann in gt_json["annotations"]:
        referred[ann["image_id"]].update(ann["description_ids"])
        for d in ann["description_ids"]:
            g = dict(ann)
            g["iscrowd"] = int(ann.get("iscrowd", 0))
            g["ignore"] = bool(g["iscrowd"])
            g["area"] = max(0, ann["bbox"][2] * ann["bbox"][3])
            ev._gts[ann["image_id"], d].append(g)
    for k, res in enumerate(results):
        for d, s in zip(res["description_ids"], res["scores"], strict=True):
            ev._dts[res["image_id"], d].append({"id": 123 + k, "bbox": res["bbox"], "score": s,
                                                "area": max(0, res["bbox"][2] * res["bbox"][3])})

    per_pair = []  # (kind, words, evaluateImg result) in image-id, label-space order
    for image_id in image_ids:
        for d in labelspace.get(image_id, []):
            ev.ious[image_id, d] = ev.computeIoU(image_id, d)
            r = ev.evaluateImg(image_id, d, AREA_ALL, 100)
            kind = descr_kind[d] if descr_kind[d] == "C" else ("Dp" if d in referred[image_id] else "Dn")
            per_pair.append((kind, descr_words[d], r))

    T, R = len(ev.params.iouThrs), len(ev.params.recThrs)
    stats = {}
    for name, (kinds, lo, hi) in GROUPS.items():
        E = [r for kind, words, r in per_pair if kind in kinds and lo <= words <= hi and r is not None]
        precision, recall, n_gt = -np.ones((T, R)), -np.ones(T), -1
        if E:
            scores = np.concatenate([e["dtScores"][:100] for e in E])
            inds = np.argsort(-scores, kind="mergesort")
            dtm = np.concatenate([e["dtMatches"][:, :100] for e in E], axis=1)[:, inds]
            dtig = np.concatenate([e["dtIgnore"][:, :100] for e in E], axis=1)[:, inds]
            gtig = np.concatenate([e["gtIgnore"] for e in E])
            n_gt = int(np.count_nonzero(gtig == 0))
            if n_gt:
                tps = np.logical_and(dtm, np.logical_not(dtig))
                fps = np.logical_and(np.logical_not(dtm), np.logical_not(dtig))
                for t in range(T):
                    tp = np.cumsum(tps[t]).astype(float)
                    fp = np.cumsum(fps[t]).astype(float)
                    nd = len(tp)
                    rc = tp / n_gt
                    pr = (tp / (fp + tp + np.spacing(1))).tolist()
                    recall[t] = rc[-1] if nd else 0
                    for i in range(nd - 1, 0, -1):
                        pr[i - 1] = max(pr[i - 1], pr[i])
                    q = [0.0] * R
                    for ri, pi in enumerate(np.searchsorted(rc, ev.params.recThrs, side="left")):
                        if pi >= nd:
                            break
                        q[ri] = pr[pi]
                    precision[t] = q
        stats[name] = (precision, recall, n_gt)

    def mean(s):
        s = s[s > -1]
        return float(np.mean(s)) if len(s) else -1.0

    def at(name, iou=None):
        p = stats[name][0]
        return mean(p if iou is None else p[np.where(iou == ev.params.iouThrs)[0]])

    out = {f"AP-{name}": at(name) for name in GROUPS}
    if stats["categ"][2] > 0 and stats["descr"][2] > 0:
        out["AP"] = (2 * out["AP-categ"] * out["AP-descr"]) / (out["AP-categ"] + out["AP-descr"] + 1e-5)
    else:
        out["AP"] = -1.0
    out.update({"AP50-descr": at("descr", .5), "AP75-descr": at("descr", .75), "AP50-categ": at("categ", .5),
                "AP75-categ": at("categ", .75), "AR-descr": mean(stats["descr"][1]),
                "AR-categ": mean(stats["categ"][1])})
    return out


def quiet(fn, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)
