"""One typed result for language-based detection, shared by inference, drawing, JSON and evaluation.

Supervision-style columns: ``xyxy`` boxes in original-image pixels, ``scores`` and ``labels`` (the
index of the expression each box answers), plus the ``expressions`` themselves. The JSON form keeps
MMDetection's prediction keys (``bboxes``, ``scores``, ``labels``) and adds the expression text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reallod.errors import DataError


@dataclass
class Detections:
    """Boxes for one image; row i answers ``expressions[labels[i]]``."""

    xyxy: np.ndarray  # (N, 4) float32, pixels
    scores: np.ndarray  # (N,) float32 in [0, 1]
    labels: np.ndarray  # (N,) int64 index into expressions
    expressions: list[str]
    image_size: tuple[int, int] | None = None  # (height, width)
    image: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.xyxy = np.asarray(self.xyxy, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        n = len(self.xyxy)
        if len(self.scores) != n or len(self.labels) != n:
            raise ValueError(f"Detections: {n} boxes, {len(self.scores)} scores, {len(self.labels)} labels")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.expressions)):
            raise ValueError("Detections: a label is not an index into expressions")

    @classmethod
    def empty(cls, expressions: list[str], **kwargs: Any) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64), list(expressions), **kwargs)

    def __len__(self) -> int:
        return len(self.scores)

    def _take(self, index: np.ndarray) -> Detections:
        return Detections(self.xyxy[index], self.scores[index], self.labels[index], list(self.expressions),
                          self.image_size, self.image, dict(self.meta))

    def above(self, threshold: float) -> Detections:
        """Only the boxes whose score is at least ``threshold``."""
        return self._take(self.scores >= threshold)

    def for_expression(self, index: int) -> Detections:
        """Only the boxes answering ``expressions[index]``."""
        return self._take(self.labels == index)

    def sorted(self) -> Detections:
        """Rows by expression, then by descending score (a stable, readable order)."""
        return self._take(np.lexsort((-self.scores, self.labels)))

    @property
    def label_names(self) -> list[str]:
        return [self.expressions[i] for i in self.labels]

    def to_dict(self, box_decimals: int = 2, score_decimals: int = 5) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.image is not None:
            d["image"] = self.image
        if self.image_size is not None:
            d["height"], d["width"] = int(self.image_size[0]), int(self.image_size[1])
        d["expressions"] = list(self.expressions)
        d["bboxes"] = np.round(self.xyxy.astype(np.float64), box_decimals).tolist()
        d["scores"] = np.round(self.scores.astype(np.float64), score_decimals).tolist()
        d["labels"] = self.labels.tolist()
        if self.meta:
            d["meta"] = self.meta
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: str | None = None) -> Detections:
        """Inverse of :meth:`to_dict`; a malformed object is a ``DataError`` naming the field."""
        if not isinstance(d, dict):
            raise DataError("expected a JSON object", path=path)
        for key in ("expressions", "bboxes", "scores", "labels"):
            if not isinstance(d.get(key), list):
                raise DataError("missing or not a list", path=path, field=key)
        try:
            size = (int(d["height"]), int(d["width"])) if "height" in d and "width" in d else None
            boxes = np.asarray(d["bboxes"], dtype=np.float32)
            if boxes.size and (boxes.ndim != 2 or boxes.shape[1] != 4):
                raise DataError("each box must be [x1, y1, x2, y2]", path=path, field="bboxes")
            return cls(boxes.reshape(-1, 4), d["scores"], d["labels"], [str(e) for e in d["expressions"]],
                       size, d.get("image"), dict(d.get("meta") or {}))
        except (TypeError, ValueError) as e:
            raise DataError(str(e), path=path) from e

    @classmethod
    def concatenate(cls, parts: list[Detections], expressions: list[str], **kwargs: Any) -> Detections:
        """Join results that already index the same ``expressions`` list."""
        if not parts:
            return cls.empty(expressions, **kwargs)
        return cls(np.concatenate([p.xyxy for p in parts]), np.concatenate([p.scores for p in parts]),
                   np.concatenate([p.labels for p in parts]), list(expressions), **kwargs)


@dataclass
class Agreement:
    """How far two results for the same image and expressions are apart (see :func:`compare`)."""

    max_score_diff: float
    max_box_diff: float
    unmatched: int  # boxes of ``a`` with no box in ``b`` of (nearly) the same score and place
    compared: int = 0  # boxes of ``a`` compared
    differing: int = 0  # boxes of ``a`` whose score (rank by rank) or place differs by more than atol

    def within(self, atol: float) -> bool:
        return self.unmatched == 0 and self.max_score_diff <= atol and self.max_box_diff <= atol


def compare(a: Detections, b: Detections, atol: float = 1e-4) -> Agreement:
    """Compare two results expression by expression, tolerant to the order of near-equal scores.

    Scores are compared rank by rank. Each box of ``a`` is matched to the closest box of ``b`` among
    those whose score is within ``atol`` of its own, since two queries whose scores differ by less
    than float noise may swap places between two equivalent computations.
    """
    if a.expressions != b.expressions:
        raise ValueError("compare: the two results are for different expressions")
    score_diff = box_diff = 0.0
    unmatched = compared = differing = 0
    for i in range(len(a.expressions)):
        sa, sb = a.for_expression(i), b.for_expression(i)
        if len(sa) != len(sb):
            unmatched += abs(len(sa) - len(sb))
        n = min(len(sa), len(sb))
        if n == 0:
            continue
        ia, ib = np.argsort(-sa.scores, kind="stable")[:n], np.argsort(-sb.scores, kind="stable")[:n]
        rank_diff = np.abs(sa.scores[ia] - sb.scores[ib])
        score_diff = max(score_diff, float(rank_diff.max()))
        close = np.abs(sa.scores[:, None] - sb.scores[None, :]) <= atol
        dist = np.abs(sa.xyxy[:, None, :] - sb.xyxy[None, :, :]).max(-1)
        dist = np.where(close, dist, np.inf).min(1)
        unmatched += int(np.isinf(dist).sum())
        compared += len(sa)
        bad = dist > atol
        bad[ia[rank_diff > atol]] = True
        differing += int(bad.sum())
        if np.isfinite(dist).any():
            box_diff = max(box_diff, float(dist[np.isfinite(dist)].max()))
    return Agreement(score_diff, box_diff, unmatched, compared, differing)
