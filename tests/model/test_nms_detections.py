import numpy as np
import pytest
import torch

from reallod.errors import DataError
from reallod.model.detections import Detections
from reallod.model.nms import box_iou, cxcywh_to_xyxy, nms


def test_box_iou_known_values():
    a = torch.tensor([[0.0, 0, 10, 10], [0, 0, 0, 0]])
    b = torch.tensor([[5.0, 5, 15, 15], [0, 0, 10, 10], [20, 20, 30, 30]])
    iou = box_iou(a, b)
    assert iou[0].tolist() == pytest.approx([25 / 175, 1.0, 0.0])
    assert iou[1].tolist() == [0.0, 0.0, 0.0]  # degenerate box: no NaN


def _reference_nms(boxes, scores, thr):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        if all(box_iou(boxes[i:i + 1], boxes[j:j + 1]).item() <= thr for j in keep):
            keep.append(i)
    return keep


def test_nms_matches_a_brute_force_reference():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(60, 2, generator=g) * 50
    wh = torch.rand(60, 2, generator=g) * 30 + 1
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.rand(60, generator=g)
    for thr in (0.1, 0.5, 0.8):
        assert nms(boxes, scores, thr).tolist() == _reference_nms(boxes, scores, thr)


def test_nms_overlaps_empty_and_half_precision():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]])
    scores = torch.tensor([0.8, 0.9, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes.half(), scores.half(), 0.5).tolist() == [1, 2]
    assert nms(boxes.double(), scores, 0.9).tolist() == [1, 0, 2]
    assert nms(boxes[:0], scores[:0], 0.5).numel() == 0


def test_cxcywh_to_xyxy():
    assert cxcywh_to_xyxy(torch.tensor([[5.0, 5, 4, 2]])).tolist() == [[3, 4, 7, 6]]


def test_detections_json_roundtrip_and_filters():
    d = Detections([[1, 2, 3, 4], [5, 6, 7, 8], [0, 0, 1, 1]], [0.9, 0.2, 0.5], [0, 1, 0], ["a dog", "a cat"],
                   image_size=(10, 20), image="x.jpg", meta={"mode": "parallel"})
    back = Detections.from_dict(d.to_dict())
    assert back.expressions == d.expressions and back.image_size == (10, 20) and back.image == "x.jpg"
    np.testing.assert_allclose(back.xyxy, d.xyxy)
    np.testing.assert_allclose(back.scores, d.scores)
    assert back.labels.tolist() == [0, 1, 0] and back.meta == {"mode": "parallel"}
    assert len(d.above(0.5)) == 2 and d.for_expression(1).label_names == ["a cat"]
    assert d.sorted().scores.tolist() == pytest.approx([0.9, 0.5, 0.2])
    assert len(Detections.empty(["x"])) == 0


@pytest.mark.parametrize(("obj", "field"), [
    ({"expressions": ["a"], "bboxes": [[1, 2, 3]], "scores": [0.1], "labels": [0]}, "bboxes"),
    ({"expressions": ["a"], "bboxes": [], "scores": [], "labels": None}, "labels"),
])
def test_detections_from_bad_json(obj, field):
    with pytest.raises(DataError, match=field):
        Detections.from_dict(obj, path="p.json")


def test_detections_reject_bad_labels():
    with pytest.raises(ValueError, match="index"):
        Detections([[0, 0, 1, 1]], [0.5], [3], ["only one"])
