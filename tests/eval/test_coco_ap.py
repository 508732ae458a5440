"""The vectorised COCO matching and pooled curves against pycocotools and hand-computed answers."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

from reallod.eval import coco_ap


def _match(dts, scores, gts, crowd=None, ignore=None, zero=None):
    """One pair: dts/gts as xywh lists; returns (matched, ignored) per detection in score order."""
    n_g = len(gts)
    crowd = np.zeros(n_g, bool) if crowd is None else np.asarray(crowd, bool)
    ignore = crowd.copy() if ignore is None else np.asarray(ignore, bool)
    zero = np.zeros(n_g, bool) if zero is None else np.asarray(zero, bool)
    idx, _ = coco_ap.detection_order(np.zeros(len(dts), np.int64), np.asarray(scores, float))
    g_order = np.lexsort((ignore, np.zeros(n_g)))
    dts_a = np.asarray(dts, float).reshape(-1, 4)[idx]
    gts_a = np.asarray(gts, float).reshape(-1, 4)[g_order]
    m = coco_ap.match_pairs(np.zeros(len(idx), np.int64), dts_a, dts_a[:, 2] * dts_a[:, 3], np.zeros(n_g, np.int64),
                            gts_a, crowd[g_order], ignore[g_order], zero[g_order], 1)
    matched, ignored = _dense(m)
    return matched.T, ignored.T  # (detection, threshold)


def _dense(m: coco_ap.Matches) -> tuple[np.ndarray, np.ndarray]:
    """Sparse matches as (matched, ignored) ``(T, n_dt)`` arrays."""
    matched = np.zeros((m.matched.shape[0], m.n_dt), dtype=bool)
    ignored = np.zeros_like(matched)
    matched[:, m.index] = m.matched
    ignored[:, m.index] = m.ignored
    return matched, ignored


def pooled_curve(scores, matched, ignored, n_gt, *, has_pairs=True) -> coco_ap.Curve:
    """The pooled curve from dense ``(T, n)`` flags: detections sorted stably by score, then only the
    matched or ignored ones handed to the sparse form the evaluation uses."""
    n = matched.shape[1]
    if n:
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
        matched, ignored = matched[:, order], ignored[:, order]
    keep = np.flatnonzero((matched | ignored).any(axis=0))
    return coco_ap.sparse_curve(n, keep, matched[:, keep], ignored[:, keep], n_gt, has_pairs=has_pairs)


def _pycoco(dts, scores, gts, crowd=None, gt_ids=None):
    crowd = [0] * len(gts) if crowd is None else list(crowd)
    ids = list(range(1, len(gts) + 1)) if gt_ids is None else gt_ids
    ev = COCOeval(iouType="bbox")
    ev._gts = {(1, 1): [{"id": i, "bbox": g, "iscrowd": c, "ignore": c, "area": g[2] * g[3]}
                        for i, g, c in zip(ids, gts, crowd, strict=True)]}
    ev._dts = {(1, 1): [{"id": k + 1, "bbox": d, "score": s, "area": d[2] * d[3]}
                        for k, (d, s) in enumerate(zip(dts, scores, strict=True))]}
    with contextlib.redirect_stdout(io.StringIO()):
        ev.ious[1, 1] = ev.computeIoU(1, 1)
        r = ev.evaluateImg(1, 1, [0, 1e10], 100)
    return r["dtMatches"].T > 0, r["dtIgnore"].T.astype(bool)


def test_iou_equals_pycocotools_bit_for_bit():
    rng = np.random.default_rng(0)
    dt = np.round(rng.uniform(0, 50, (40, 4)), 3)
    gt = np.round(rng.uniform(0, 50, (7, 4)), 1)
    gt[:, 2:] += 5
    crowd = np.array([0, 1, 0, 0, 1, 0, 0], dtype=np.uint8)
    ours = coco_ap.iou_xywh(dt, gt, crowd)
    theirs = np.asarray(mask_utils.iou(dt.tolist(), gt.tolist(), crowd.tolist()))
    assert ours.shape == theirs.shape and np.array_equal(ours, theirs)


def test_equal_iou_goes_to_the_later_box():
    # two identical ground-truth boxes: pycocotools keeps the later one on a tie
    gts = [[0, 0, 10, 10], [0, 0, 10, 10]]
    matched, _ = _match([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8, 0.7], gts, zero=[False, True])
    # the best detection takes box 2 (id 0 → not a match), the next one box 1, the third nothing
    assert matched[:, 0].tolist() == [False, True, False]
    ref, _ = _pycoco([[0, 0, 10, 10]] * 3, [0.9, 0.8, 0.7], gts, gt_ids=[5, 0])
    assert ref[:, 0].tolist() == [False, True, False]


def test_crowd_box_absorbs_any_number_of_detections_as_ignored():
    gts = [[0, 0, 20, 20], [0, 0, 100, 100]]
    dts = [[0, 0, 20, 20], [1, 1, 19, 19], [30, 30, 10, 10], [200, 200, 5, 5]]
    matched, ignored = _match(dts, [0.9, 0.8, 0.7, 0.6], gts, crowd=[False, True])
    ref_m, ref_i = _pycoco(dts, [0.9, 0.8, 0.7, 0.6], gts, crowd=[0, 1])
    assert np.array_equal(matched, ref_m) and np.array_equal(ignored, ref_i)
    assert matched[0].all() and ignored[1].all() and ignored[2].all()  # 2nd and 3rd fall inside the crowd
    assert not matched[3].any() and not ignored[3].any()  # far away: a false positive


@pytest.mark.parametrize("seed", range(8))
def test_random_pairs_match_pycocotools(seed):
    rng = np.random.default_rng(seed)
    gts = np.round(rng.uniform(0, 40, (int(rng.integers(1, 9)), 4)), 1)
    gts[:, 2:] += 10
    dts = []
    for _ in range(int(rng.integers(1, 140))):  # beyond 100: truncation
        g = gts[rng.integers(len(gts))]
        dts.append((g + rng.normal(0, 2.5, 4)).round(2).tolist())
    dts = np.abs(np.asarray(dts)).tolist()
    scores = rng.choice(np.linspace(0.1, 1, 10), len(dts)).tolist()  # ties
    crowd = (rng.random(len(gts)) < 0.25).astype(int).tolist()
    matched, ignored = _match(dts, scores, gts.tolist(), crowd=crowd)
    ref_m, ref_i = _pycoco(dts, scores, gts.tolist(), crowd=crowd)
    assert np.array_equal(matched, ref_m) and np.array_equal(ignored, ref_i)


def test_many_pairs_at_once_equal_one_pair_at_a_time():
    rng = np.random.default_rng(3)
    dt_pair, dt_box, dt_score, gt_pair, gt_box = [], [], [], [], []
    for p in range(60):
        n_g = int(rng.integers(0, 6))
        g = np.round(rng.uniform(0, 40, (n_g, 4)), 1)
        g[:, 2:] += 8
        gt_pair += [p] * n_g
        gt_box += g.tolist()
        for _ in range(int(rng.integers(0, 30))):
            base = g[rng.integers(n_g)] if n_g and rng.random() < 0.7 else rng.uniform(0, 40, 4)
            dt_box.append(np.abs(base + rng.normal(0, 2, 4)).round(2).tolist())
            dt_pair.append(p)
            dt_score.append(float(rng.choice([0.2, 0.4, 0.6, 0.8])))
    idx, _ = coco_ap.detection_order(np.array(dt_pair), np.array(dt_score))
    m = coco_ap.match_pairs(np.array(dt_pair)[idx], np.asarray(dt_box), np.prod(np.asarray(dt_box)[:, 2:], axis=1),
                            np.array(gt_pair), np.asarray(gt_box), np.zeros(len(gt_pair), bool),
                            np.zeros(len(gt_pair), bool), np.zeros(len(gt_pair), bool), 60, dt_rows=idx)
    dense_matched, _ = _dense(m)
    for p in range(60):
        rows = np.flatnonzero(np.array(dt_pair)[idx] == p)
        gts = [b for q, b in zip(gt_pair, gt_box, strict=True) if q == p]
        if not len(rows) or not gts:
            assert not dense_matched[:, rows].any()
            continue
        order = [i for i in idx if dt_pair[i] == p]
        ref_m, _ = _pycoco([dt_box[i] for i in order], [dt_score[i] for i in order], gts)
        assert np.array_equal(dense_matched[:, rows].T, ref_m), p


def test_pooled_curve_known_answers():
    # two boxes; detections in score order: FP, TP, TP → precision envelope 2/3 at every recall point
    matched = np.array([[False] * 10, [True] * 10, [True] * 10]).T  # (threshold, detection)
    curve = pooled_curve(np.array([0.9, 0.8, 0.7]), matched, np.zeros_like(matched), 2)
    assert coco_ap.ap(curve) == pytest.approx(2 / 3, abs=1e-12)
    assert coco_ap.ar(curve) == 1.0
    # one of two boxes found, first: precision 1 up to recall 0.5 → 51 of 101 recall points
    curve = pooled_curve(np.array([0.9]), matched[:, 1:2], np.zeros((10, 1), bool), 2)
    assert coco_ap.ap(curve) == pytest.approx(51 / 101, abs=1e-12)
    assert coco_ap.ap(curve, .5) == pytest.approx(51 / 101, abs=1e-12)
    # no boxes: undefined (-1), as pycocotools
    assert coco_ap.ap(pooled_curve(np.array([0.5]), matched[:, :1], np.zeros((10, 1), bool), 0)) == -1
    assert coco_ap.ap(pooled_curve(np.zeros(0), np.zeros((10, 0), bool), np.zeros((10, 0), bool), 0,
                                   has_pairs=False)) == -1


def _accumulate_like_pycocotools(scores, matched, ignored, n_gt, rec_thrs):
    """pycocotools' accumulate for one category, written out plainly (dense arrays, Python loops)."""
    order = np.argsort(-scores, kind="mergesort")
    dtm, dtig = matched[:, order], ignored[:, order]
    tps = np.logical_and(dtm, np.logical_not(dtig))
    fps = np.logical_and(np.logical_not(dtm), np.logical_not(dtig))
    tp_sum = np.cumsum(tps, axis=1).astype(dtype=float)
    fp_sum = np.cumsum(fps, axis=1).astype(dtype=float)
    precision, recall = np.zeros((len(tp_sum), len(rec_thrs))), np.zeros(len(tp_sum))
    for t, (tp, fp) in enumerate(zip(tp_sum, fp_sum, strict=True)):
        nd = len(tp)
        rc = tp / n_gt
        pr = (tp / (fp + tp + np.spacing(1))).tolist()
        recall[t] = rc[-1] if nd else 0
        for i in range(nd - 1, 0, -1):
            if pr[i] > pr[i - 1]:
                pr[i - 1] = pr[i]
        q = [0.0] * len(rec_thrs)
        for ri, pi in enumerate(np.searchsorted(rc, rec_thrs, side="left")):
            if pi >= nd:
                break
            q[ri] = pr[pi]
        precision[t] = q
    return precision, recall


@pytest.mark.parametrize("seed", range(6))
def test_sparse_curve_equals_the_dense_accumulation(seed):
    rng = np.random.default_rng(seed)
    n, n_t = int(rng.integers(1, 400)), 10
    scores = rng.choice(np.linspace(0, 1, 7), n)  # many ties
    matched = rng.random((n_t, n)) < rng.uniform(0.01, 0.4)
    ignored = rng.random((n_t, n)) < 0.05
    n_gt = int(matched.sum(axis=1).max()) + int(rng.integers(0, 5)) or 1
    curve = pooled_curve(scores, matched, ignored, n_gt)
    precision, recall = _accumulate_like_pycocotools(scores, matched, ignored, n_gt, coco_ap.RECALL_THRESHOLDS)
    assert np.array_equal(curve.precision, precision) and np.array_equal(curve.recall, recall)
