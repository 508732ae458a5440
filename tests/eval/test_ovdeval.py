"""OVDEval NMS-AP: hard negatives on the right box, the official script's flow, subsets, bad input."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from reallod.errors import DataError
from reallod.eval import ovdeval as ov
from reallod.eval.common import parse_coco_results
from tests.eval.synthetic import coco_predictions, ovdeval_subset


def _bench(gt, name="color"):
    return ov.OVDEvalBenchmark([ov.parse_subset(gt, f"{name}.json", 0, name)])


def _one_box_gt():
    return {"images": [{"id": 1, "file_name": "a.png", "text": ["dog"], "neg_text": ["cat"]},
                       {"id": 2, "file_name": "b.png", "text": ["cat"], "neg_text": ["dog"]}],
            "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600,
                             "iscrowd": 0},
                            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [5, 5, 30, 30], "area": 900,
                             "iscrowd": 0}]}


def _preds(neg_score):
    return parse_coco_results([
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.8},
        {"image_id": 1, "category_id": 2, "bbox": [11, 10, 40, 39], "score": neg_score},  # hard negative, same box
        {"image_id": 2, "category_id": 2, "bbox": [5, 5, 30, 30], "score": 0.9},
    ], None)


def test_hard_negative_on_the_same_box_is_suppressed_when_it_scores_lower():
    m = ov.evaluate(_bench(_one_box_gt()), _preds(0.5)).metrics
    assert m["color/AP"] == pytest.approx(1.0, abs=1e-12) and m["AP"] == m["color/AP"]


def test_hard_negative_scoring_higher_costs_the_positive():
    m = ov.evaluate(_bench(_one_box_gt()), _preds(0.95)).metrics
    # the dog prediction is deleted: dog AP 0. The kept cat box on image 1 is a false positive ranked above
    # image 2's true cat: cat AP 1/2.
    assert m["color/AP"] == pytest.approx((0 + 0.5) / 2, abs=1e-12)


def test_without_nms_the_hard_negative_would_only_be_a_false_positive():
    pred = _preds(0.95)
    keep = ov.nms_keep({1: np.array([[10, 10, 40, 40]], float), 2: np.array([[5, 5, 30, 30]], float)},
                       pred.image_id, pred.bbox, pred.score)
    assert keep.tolist() == [False, True, True]


def _official_flow(gt, preds, tmp_path):
    """The official eval.py, step by step: per image and ground-truth box keep the best overlap, then COCOeval."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    by_image, gts = {}, {}
    for p in preds:
        by_image.setdefault(p["image_id"], []).append(p)
    for a in gt["annotations"]:
        gts.setdefault(a["image_id"], []).append(a["bbox"])
    kept_all = []
    for image_id, items in by_image.items():
        boxes = np.array([p["bbox"] for p in items])
        scores = np.array([p["score"] for p in items])
        keep, drop = [], []
        for g in gts.get(image_id, []):
            x1 = np.maximum(g[0], boxes[:, 0])
            y1 = np.maximum(g[1], boxes[:, 1])
            x2 = np.minimum(g[0] + g[2], boxes[:, 0] + boxes[:, 2])
            y2 = np.minimum(g[1] + g[3], boxes[:, 1] + boxes[:, 3])
            inter = np.maximum(0, x2 - x1) * np.maximum(0, y2 - y1)
            union = g[2] * g[3] + boxes[:, 2] * boxes[:, 3] - inter
            with np.errstate(all="ignore"):
                iou = np.where(union == 0, 0, inter / union)
            hits = list(np.where(iou > 0.5)[0])
            if hits:
                ranked = [hits[k] for k in np.argsort(scores[hits])[::-1]]
                keep.append(ranked[0])
                drop += ranked[1:]
        drop = [d for d in drop if d not in keep]
        kept_all += [p for k, p in enumerate(items) if k not in drop]
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt_path))
        ev = COCOeval(coco, coco.loadRes(kept_all), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


@pytest.mark.parametrize("seed", range(4))
def test_equals_the_official_script(tmp_path, seed):
    gt = ovdeval_subset(seed, n_images=8)
    bench = _bench(gt)
    prompts = {img.image_id: img.keys for img in bench.subsets[0].images}
    preds = coco_predictions(gt, prompts, seed=seed, per_label=8)
    ours = ov.evaluate(bench, parse_coco_results(json.loads(json.dumps(preds)), None)).metrics
    ref = _official_flow(gt, preds, tmp_path)
    assert ours["color/AP"] == ref[0] and ours["color/AP50"] == ref[1] and ours["color/AP75"] == ref[2]
    assert 0 < ours["color/AP"] < 1


def test_a_box_of_a_category_the_file_does_not_list_is_said_and_scored_as_officially(tmp_path):
    """The official script leaves such a box out of the scores (pycocotools evaluates the listed categories);
    it was left out without a word."""
    gt = ovdeval_subset(0, n_images=8)
    gt["annotations"].append({**gt["annotations"][0], "id": 999, "category_id": 77})
    bench = _bench(gt)
    assert bench.subsets[0].notes == [f"color.json: 1 annotation(s) of a category or image the file does not list, "
                                      f"not scored (as in the official script), e.g. annotations"
                                      f"[{len(gt['annotations']) - 1}]"]
    prompts = {img.image_id: img.keys for img in bench.subsets[0].images}
    preds = coco_predictions(gt, prompts, seed=0, per_label=8)
    ours = ov.evaluate(bench, parse_coco_results(json.loads(json.dumps(preds)), None))
    assert ours.metrics["color/AP"] == _official_flow(gt, preds, tmp_path)[0]
    assert any("not scored" in note for note in ours.notes)


def test_prompts_and_subsets(tmp_path):
    folder = tmp_path / "annotations"
    folder.mkdir()
    gt = ovdeval_subset(0)
    (folder / "color.json").write_text(json.dumps(gt))
    logo = ovdeval_subset(1, labels=("nike", "adidas", "puma"))
    (folder / "logo.json").write_text(json.dumps(logo))
    both = ov.load(folder)
    assert [s.name for s in both.subsets] == ["color", "logo"]
    img = both.subsets[0].images[0]
    assert img.texts == gt["images"][0]["text"] + gt["images"][0]["neg_text"]
    assert both.subsets[1].images[0].texts == ["nike", "adidas", "puma"]  # a subset prompting every category
    assert [s.name for s in ov.load(folder, "logo").subsets] == ["logo"]
    with pytest.raises(DataError, match="no subset 'negation' here \\(found: color, logo\\)"):
        ov.load(folder, "negation")
    # several subsets: predictions are a folder of <subset>.json
    rows = parse_coco_results(coco_predictions(gt, {i.image_id: i.keys for i in both.subsets[0].images}), None, 0)
    rows2 = parse_coco_results(coco_predictions(logo, {i.image_id: i.keys for i in both.subsets[1].images}), None, 1)
    from reallod.eval.common import Predictions

    out = tmp_path / "preds"
    written = ov.write_predictions(out, both, Predictions.concat([rows, rows2]))
    assert [p.name for p in written] == ["color.json", "logo.json"]
    m = ov.evaluate(both, ov.load_predictions(out, both)).metrics
    assert m["AP"] == pytest.approx((m["color/AP"] + m["logo/AP"]) / 2)


def test_bad_input(tmp_path):
    gt = _one_box_gt()
    bench = _bench(gt)
    good = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}
    for entry, message in [({**good, "image_id": 7}, "color image 7 is not in"),
                           ({**good, "category_id": 9}, "color category 9 is not in"),
                           ({**good, "bbox": [0, 0, -2, 5]}, "negative width"),
                           ({**good, "score": float("nan")}, "finite"),
                           ({**good, "score": 10 ** 400}, "finite"),
                           ({**good, "bbox": [0, 0, 10 ** 400, 5]}, "not finite")]:
        path = tmp_path / "p.json"
        path.write_text(json.dumps([good, entry]))
        with pytest.raises(DataError, match="predictions\\[1\\]") as err:
            ov.evaluate(bench, ov.load_predictions(path, bench), path=str(path))
        assert message in str(err.value)
    gt["images"][0]["neg_text"] = ["unicorn"]
    with pytest.raises(DataError, match="'unicorn' is not the name of a category"):
        _bench(gt)


@pytest.mark.parametrize(("mutate", "field", "message"), [
    (lambda gt: gt["categories"][0].__setitem__("id", True), "categories[0].id", "expected an integer id, got True"),
    (lambda gt: gt["categories"][1].__setitem__("name", "?"), "categories[1].name",
     "'?' has no words once '.' and '?' are removed"),
    (lambda gt: gt["images"][0].__setitem__("id", 2 ** 64), "images[0].id", "does not fit in 64 bits"),
    (lambda gt: gt["annotations"][1].__setitem__("image_id", "2"), "annotations[1].image_id", "got '2'"),
    (lambda gt: gt["annotations"][1].__setitem__("category_id", 2.5), "annotations[1].category_id", "got 2.5"),
    (lambda gt: gt["annotations"][0].__setitem__("bbox", [float("nan"), 0, 5, 5]), "annotations[0].bbox",
     "not finite"),
    (lambda gt: gt["annotations"][0].__setitem__("bbox", [0, 0, 10 ** 400, 5]), "annotations[0].bbox",
     "not finite"),
    (lambda gt: gt["annotations"][0].__setitem__("bbox", [False, 0, 5, 5]), "annotations[0].bbox",
     "expected [x, y, width, height]"),
    (lambda gt: gt["annotations"][0].__setitem__("iscrowd", "no"), "annotations[0].iscrowd", "expected 0 or 1"),
])
def test_bad_ground_truth_fields_are_named(mutate, field, message):
    gt = _one_box_gt()
    mutate(gt)
    with pytest.raises(DataError) as err:
        ov.parse_subset(gt, "color.json")
    assert str(err.value).startswith(f"color.json: {field}: ") and message in str(err.value), str(err.value)


@pytest.mark.parametrize("key", ["image_id", "category_id"])
def test_bool_ids_in_results_are_not_read_as_one(key):
    """numpy reads [2, true] as [2, 1]: the fast path must not score a bool as id 1."""
    good = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}
    with pytest.raises(DataError, match=rf"p\.json: predictions\[1\].*\.{key}: expected an integer id, got True"):
        parse_coco_results([good, {**good, key: True}], "p.json")


def test_write_predictions_one_subset_as_a_file_or_into_a_folder(tmp_path):
    """One subset: a .json name is the file, any other name a folder holding <subset>.json."""
    gt = _one_box_gt()
    bench = _bench(gt)
    pred = _preds(0.5)
    assert ov.write_predictions(tmp_path / "p.json", bench, pred) == [tmp_path / "p.json"]
    assert ov.write_predictions(tmp_path / "p", bench, pred) == [tmp_path / "p" / "color.json"]
    assert (tmp_path / "p.json").read_bytes() == (tmp_path / "p" / "color.json").read_bytes()
