"""COCO-style matching and pooled precision/recall, vectorised over many (image, label) pairs.

The arithmetic is pycocotools' ``COCOeval`` for boxes (``evaluateImg`` + ``accumulate``), area range
"all", at most 100 detections per pair, reproduced operation by operation so the numbers are the
same to the last bit:

- IoU of xywh boxes as pycocotools' C ``bbIou`` computes it (a crowd box's union is the detection's
  own area);
- per pair, detections sorted by descending score (stable), truncated to 100; ground truth sorted
  with ignored boxes last (stable);
- greedy matching per IoU threshold: each detection, best first, takes the unmatched box with the
  highest IoU at or above the threshold (ties go to the later box), regular boxes before ignored
  ones; crowd boxes may be taken again. A match to a box whose id is 0 does not count as a match
  (pycocotools stores the matched id, and 0 reads as "unmatched");
- precision/recall curves from detections pooled over pairs and stably sorted by score,
  interpolated at 101 recall points.

Pure numpy, no I/O. pycocotools loops in Python over every detection, box and threshold of every
pair; here the loops run over detection *ranks* and box *slots*, vectorised across all pairs of a
bucket, and only over detections that overlap some box by at least the lowest threshold (others
cannot match anything).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The same expressions as pycocotools' Params, so the floats are identical.
IOU_THRESHOLDS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)
MAX_DETS = 100
AREA_ALL = (0 ** 2, 1e5 ** 2)

_CHUNK_ELEMENTS = 1 << 21  # detections × box slots per dense block (bounds memory)


def iou_xywh(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of xywh boxes, ``dt (..., D, 4)`` × ``gt (..., G, 4)`` → ``(..., D, G)``, as pycocotools."""
    dt = np.asarray(dt, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    dx, dy, dw, dh = (dt[..., :, None, k] for k in range(4))
    gx, gy, gw, gh = (gt[..., None, :, k] for k in range(4))
    w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    overlap = (w > 0) & (h > 0)
    inter = w * h
    da = dw * dh
    union = np.where(np.asarray(crowd, dtype=bool)[..., None, :], da, da + gw * gh - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(overlap, inter / np.where(overlap, union, 1.0), 0.0)


def detection_order(pair: np.ndarray, score: np.ndarray, max_dets: int = MAX_DETS,
                    score_order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices that sort detections by pair, then score (descending, stable), keeping ``max_dets`` per pair.

    Returns ``(index, rank)``: ``rank`` is each kept detection's position within its pair.
    ``score_order`` (the stable descending-score order, if the caller has it) saves a sort.
    """
    pair = np.asarray(pair)
    score = np.asarray(score, dtype=np.float64)
    if len(pair) > 1 and _in_order(pair, score):  # e.g. predictions written by `reallod eval --model`
        order = np.arange(len(pair))
    else:
        if score_order is None:
            score_order = np.argsort(-score, kind="stable")
        order = score_order[stable_argsort_ids(pair[score_order])]
    p = pair[order]
    rank = _rank_within(p)
    keep = rank < max_dets
    return order[keep], rank[keep]


def stable_argsort_ids(keys: np.ndarray) -> np.ndarray:
    """Stable argsort of non-negative integer ids: two 16-bit radix passes below 2**32 (numpy radix-sorts
    16-bit keys in linear time), numpy's stable sort otherwise."""
    keys = np.asarray(keys)
    if not len(keys) or keys.min() < 0 or keys.max() >= 1 << 32:
        return np.argsort(keys, kind="stable")
    low = np.argsort((keys & 0xFFFF).astype(np.uint16), kind="stable")
    high = (keys[low] >> 16).astype(np.uint16)
    return low if not high.any() else low[np.argsort(high, kind="stable")]


def _in_order(pair: np.ndarray, score: np.ndarray) -> bool:
    dp = np.diff(pair)
    return bool(((dp > 0) | ((dp == 0) & (np.diff(score) <= 0))).all())


def _rank_within(sorted_keys: np.ndarray) -> np.ndarray:
    n = len(sorted_keys)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    start = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
    first = np.maximum.accumulate(np.where(start, np.arange(n), 0))
    return np.arange(n) - first


def _offsets(sorted_pair: np.ndarray, n_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.bincount(sorted_pair, minlength=n_pairs).astype(np.int64)
    starts = np.zeros(n_pairs, dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    return starts, counts


@dataclass
class Matches:
    """The detections matched or ignored at some IoU threshold; every other one is unmatched everywhere.

    Sparse because few detections overlap a box: ``index`` (ascending) are their positions in the
    matching order, ``matched``/``ignored`` their flags per threshold.
    """

    n_dt: int
    index: np.ndarray  # (k,) int64
    matched: np.ndarray  # (T, k) bool — pycocotools' dtMatches > 0
    ignored: np.ndarray  # (T, k) bool — pycocotools' dtIgnore


def match_pairs(dt_pair: np.ndarray, dt_boxes: np.ndarray, dt_area: np.ndarray,
                gt_pair: np.ndarray, gt_boxes: np.ndarray, gt_crowd: np.ndarray, gt_ignore: np.ndarray,
                gt_zero_id: np.ndarray, n_pairs: int, iou_thresholds: np.ndarray = IOU_THRESHOLDS,
                area_range: tuple[float, float] = AREA_ALL, dt_rows: np.ndarray | None = None) -> Matches:
    """Greedy COCO matching for every pair at once.

    ``dt_pair`` must be in :func:`detection_order` (by pair, best first, truncated); ``gt_*`` sorted by
    pair with ignored boxes last (stable). Pair ids are ``0 .. n_pairs-1``. ``dt_rows``, when given,
    says which row of ``dt_boxes``/``dt_area`` each detection is (so they need not be reordered).
    """
    thresholds = np.minimum(np.asarray(iou_thresholds, dtype=np.float64), 1 - 1e-10)
    n_t = len(thresholds)
    dt_pair = np.asarray(dt_pair, dtype=np.int64)
    gt_pair = np.asarray(gt_pair, dtype=np.int64)
    n_dt = len(dt_pair)
    rows = np.arange(n_dt) if dt_rows is None else np.asarray(dt_rows, dtype=np.int64)
    dt_start, dt_count = _offsets(dt_pair, n_pairs)
    gt_start, gt_count = _offsets(gt_pair, n_pairs)
    gt_crowd = np.asarray(gt_crowd, dtype=bool)
    gt_ignore = np.asarray(gt_ignore, dtype=bool)
    gt_zero_id = np.asarray(gt_zero_id, dtype=bool)
    dt_boxes = np.asarray(dt_boxes, dtype=np.float64).reshape(-1, 4)
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)

    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    both = np.flatnonzero((dt_count > 0) & (gt_count > 0))
    if len(both):
        # Buckets of pairs with a similar number of boxes (rounded up to a power of two).
        slots = 1 << np.ceil(np.log2(gt_count[both])).astype(np.int64)
        for g_slots in np.unique(slots):
            bucket = both[slots == g_slots]
            d_max = int(dt_count[bucket].max())
            per_chunk = max(1, _CHUNK_ELEMENTS // (d_max * int(g_slots)))
            for lo in range(0, len(bucket), per_chunk):
                block = _match_block(bucket[lo:lo + per_chunk], int(g_slots), d_max, dt_start, dt_count, gt_start,
                                     gt_count, dt_boxes, rows, gt_boxes, gt_crowd, gt_ignore, gt_zero_id, thresholds)
                if block is not None:
                    found.append(block)

    # Unmatched detections outside the area range are ignored too (pycocotools: dtMatches == 0 there).
    area = np.asarray(dt_area, dtype=np.float64)[rows]
    outside = np.flatnonzero((area < area_range[0]) | (area > area_range[1]))
    if len(outside):
        found.append((outside, np.zeros((n_t, len(outside)), bool), np.zeros((n_t, len(outside)), bool)))
    if not found:
        return Matches(n_dt, np.zeros(0, np.int64), np.zeros((n_t, 0), bool), np.zeros((n_t, 0), bool))
    index = np.concatenate([f[0] for f in found])
    matched = np.concatenate([f[1] for f in found], axis=1)
    ignored = np.concatenate([f[2] for f in found], axis=1)
    index, first = np.unique(index, return_index=True)  # a detection outside the range may also be matched
    matched, ignored = matched[:, first], ignored[:, first]
    if len(outside):
        is_out = np.isin(index, outside)
        ignored |= ~matched & is_out[None, :]
    return Matches(n_dt, index, matched, ignored)


def _match_block(pairs: np.ndarray, g_slots: int, d_max: int, dt_start: np.ndarray, dt_count: np.ndarray,
                 gt_start: np.ndarray, gt_count: np.ndarray, dt_boxes: np.ndarray, dt_rows: np.ndarray,
                 gt_boxes: np.ndarray, gt_crowd: np.ndarray, gt_ignore: np.ndarray, gt_zero_id: np.ndarray,
                 thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Match a block of pairs with at most ``g_slots`` boxes; (detections, matched, ignored) of the candidates."""
    n_p = len(pairs)
    n_t = len(thresholds)
    # dense detections (n_p, d_max) and boxes (n_p, g_slots)
    d_idx = dt_start[pairs, None] + np.arange(d_max)[None, :]
    d_ok = np.arange(d_max)[None, :] < dt_count[pairs, None]
    d_idx = np.where(d_ok, d_idx, 0)
    g_idx = gt_start[pairs, None] + np.arange(g_slots)[None, :]
    g_ok = np.arange(g_slots)[None, :] < gt_count[pairs, None]
    g_idx = np.where(g_ok, g_idx, 0)
    crowd = gt_crowd[g_idx] & g_ok
    ious = iou_xywh(dt_boxes[dt_rows[d_idx]], gt_boxes[g_idx], crowd)  # (n_p, d_max, g_slots)
    ious = np.where(g_ok[:, None, :] & d_ok[:, :, None], ious, -np.inf)

    # Only detections reaching the lowest threshold on some box can match; keep them, in rank order.
    cand = (ious >= thresholds.min()).any(axis=2)
    n_cand = cand.sum(axis=1)
    c_max = int(n_cand.max()) if n_p else 0
    if c_max == 0:
        return None
    rank = np.cumsum(cand, axis=1) - 1
    rows, cols = np.nonzero(cand)
    c_det = np.zeros((n_p, c_max), dtype=np.int64)  # column into d_max
    c_det[rows, rank[rows, cols]] = cols
    c_ok = np.arange(c_max)[None, :] < n_cand[:, None]
    c_iou = np.take_along_axis(ious, c_det[:, :, None], axis=1)  # (n_p, c_max, g_slots)

    ign = gt_ignore[g_idx] & g_ok
    skip_taken = ~crowd  # a taken box is skipped unless it is a crowd box
    taken = np.zeros((n_p, n_t, g_slots), dtype=bool)
    thr = thresholds[None, :]
    p_ar = np.arange(n_p)[:, None]
    t_ar = np.arange(n_t)[None, :]
    m_all = np.full((n_p, c_max, n_t), -1, dtype=np.int64)
    for c in range(c_max):
        best = np.broadcast_to(thr, (n_p, n_t)).copy()
        m = np.full((n_p, n_t), -1, dtype=np.int64)
        m_regular = np.zeros((n_p, n_t), dtype=bool)
        stop = np.zeros((n_p, n_t), dtype=bool)
        for g in range(g_slots):
            iou_g = c_iou[:, c, g][:, None]
            stop |= m_regular & ign[:, g][:, None]
            ok = ~stop & (iou_g >= best)
            ok &= ~(taken[:, :, g] & skip_taken[:, g][:, None])
            best = np.where(ok, iou_g, best)
            m = np.where(ok, g, m)
            m_regular = np.where(ok, ~ign[:, g][:, None], m_regular)
        m = np.where(c_ok[:, c][:, None], m, -1)
        hit = m >= 0
        taken[p_ar, t_ar, np.where(hit, m, 0)] |= hit
        m_all[:, c, :] = m

    hit = m_all >= 0  # (n_p, c_max, n_t)
    m_safe = np.where(hit, m_all, 0)
    p3 = np.broadcast_to(np.arange(n_p)[:, None, None], m_safe.shape)
    box = g_idx[p3, m_safe]
    flat_det = d_idx[np.arange(n_p)[:, None], c_det]  # (n_p, c_max)
    is_match = hit & ~gt_zero_id[box]
    is_ignored = hit & gt_ignore[box]
    return flat_det[c_ok], is_match[c_ok].T, is_ignored[c_ok].T


@dataclass
class Curve:
    """Interpolated precision ``(T, R)`` and final recall ``(T,)``; -1 where the group has no boxes."""

    precision: np.ndarray
    recall: np.ndarray
    n_gt: int  # regular (not ignored) boxes; -1 when the group has no pair at all


def sparse_curve(n_det: int, position: np.ndarray, matched: np.ndarray, ignored: np.ndarray, n_gt: int, *,
                 has_pairs: bool = True, recall_thresholds: np.ndarray = RECALL_THRESHOLDS) -> Curve:
    """The pooled curve from the few detections that are matched or ignored at some threshold.

    ``n_det`` detections in score order; ``position`` (ascending) says where the listed ones sit,
    ``matched``/``ignored`` ``(T, len(position))`` their flags; every other detection is a false
    positive. Recall changes only at true positives and precision falls between them, so pycocotools'
    interpolated precision at each recall point (the best precision from the first detection reaching
    that recall onwards) is the best precision over the true positives from there on. The precision at
    a true positive is computed from the same integer counts, in the same float operations, as
    pycocotools computes it over the whole array, so the numbers are identical.
    """
    n_t = matched.shape[0]
    n_r = len(recall_thresholds)
    precision = -np.ones((n_t, n_r))
    recall = -np.ones(n_t)
    if not has_pairs:
        return Curve(precision, recall, -1)
    if n_gt == 0:
        return Curve(precision, recall, 0)
    if n_det == 0:
        return Curve(np.zeros((n_t, n_r)), np.zeros(n_t), n_gt)
    position = np.asarray(position, dtype=np.int64)
    for t in range(n_t):
        tp_at = position[matched[t] & ~ignored[t]]  # positions of the true positives, ascending
        ignored_at = position[ignored[t]]
        k = len(tp_at)
        tp = np.arange(1, k + 1, dtype=np.int64)
        fp = tp_at + 1 - tp - np.searchsorted(ignored_at, tp_at, side="right")
        tp_f = tp.astype(dtype=float)
        rc = tp_f / n_gt
        pr = tp_f / (fp.astype(dtype=float) + tp_f + np.spacing(1))
        recall[t] = rc[-1] if k else 0.0
        q = np.zeros(n_r)
        if k:
            best = np.maximum.accumulate(pr[::-1])[::-1]  # best precision from each true positive on
            j = np.searchsorted(rc, recall_thresholds, side="left")  # the first true positive reaching r
            reached = j < k
            q[reached] = best[j[reached]]
        precision[t] = q
    return Curve(precision, recall, n_gt)


def mean_valid(values: np.ndarray) -> float:
    """pycocotools' summary: the mean of the entries above -1, or -1 when there are none."""
    v = np.asarray(values)
    v = v[v > -1]
    return float(np.mean(v)) if len(v) else -1.0


def ap(curve: Curve, iou: float | None = None) -> float:
    """AP averaged over IoU thresholds (or at one threshold, .5 or .75) and recall points."""
    s = curve.precision
    if iou is not None:
        s = s[np.where(iou == IOU_THRESHOLDS)[0]]
    return mean_valid(s)


def ar(curve: Curve) -> float:
    return mean_valid(curve.recall)
