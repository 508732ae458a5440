"""OmniLabel metric: hand-built cases with known answers, the pycocotools oracle, bad input."""

from __future__ import annotations

import copy
import json

import pytest

from reallod.errors import DataError
from reallod.eval import omnilabel as ol
from tests.eval.omnilabel_reference import reference_evaluate
from tests.eval.synthetic import omnilabel_gt, omnilabel_predictions

HM_OF_ONES = 2 / (2 + 1e-5)  # the toolkit's harmonic mean keeps a 1e-5 in the denominator


def _gt():
    """Two images. Image 1: 'dog' (C, 1 box), 'a brown dog on the grass' (Dp, 1 box), 'a red car' (Dn).
    Image 2: 'person' (C, 2 boxes), 'the three people standing in a row near the tall window' (Dp, 3 boxes)."""
    return {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100},
                   {"id": 2, "file_name": "b.jpg", "width": 100, "height": 100},
                   {"id": 3, "file_name": "empty.jpg", "width": 100, "height": 100}],
        "descriptions": [
            {"id": 10, "text": "dog", "image_ids": [1], "anno_info": {"type": "object_class"}},
            {"id": 11, "text": "a brown dog on the grass", "image_ids": [1], "anno_info": {"type": "object_description"}},
            {"id": 12, "text": "a red car", "image_ids": [1], "anno_info": {"type": "object_description"}},
            {"id": 20, "text": "person", "image_ids": [2], "anno_info": {"type": "object_class"}},
            {"id": 21, "text": "the three people standing in a row near the tall window", "image_ids": [2],
             "anno_info": {"type": "object_description"}},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "bbox": [10, 10, 30, 30], "description_ids": [10, 11]},
            {"id": 2, "image_id": 2, "bbox": [0, 0, 20, 40], "description_ids": [20, 21]},
            {"id": 3, "image_id": 2, "bbox": [30, 0, 20, 40], "description_ids": [20, 21]},
            {"id": 4, "image_id": 2, "bbox": [60, 0, 20, 40], "description_ids": [21]},
        ],
    }


def _perfect(gt):
    return [{"image_id": a["image_id"], "bbox": a["bbox"], "description_ids": list(a["description_ids"]),
             "scores": [1.0] * len(a["description_ids"])} for a in gt["annotations"]]


def _score(gt, preds, **kw):
    return ol.evaluate(ol.parse_gt(copy.deepcopy(gt), **kw), ol.parse_predictions(copy.deepcopy(preds))).metrics


def test_perfect_predictions_give_one():
    m = _score(_gt(), _perfect(_gt()))
    for name in ("AP-categ", "AP-descr", "AP-descr-pos", "AP50-descr", "AP75-descr", "AR-descr", "AR-categ"):
        assert m[name] == 1.0, name
    assert m["AP"] == pytest.approx(HM_OF_ONES, abs=1e-15)


def test_false_positive_on_a_negative_description_lowers_descr_not_descr_pos():
    preds = [*_perfect(_gt()), {"image_id": 1, "bbox": [50, 50, 20, 20], "description_ids": [12], "scores": [2.0]}]
    m = _score(_gt(), preds)
    # descr pools 4 boxes; the false positive ranks first: precision 4/5 at full recall
    assert m["AP-descr"] == pytest.approx(4 / 5, abs=1e-12)
    assert m["AP-descr-pos"] == 1.0 and m["AP-categ"] == 1.0
    assert m["AP"] < HM_OF_ONES


def test_missing_prediction_and_description_with_several_boxes():
    preds = [p for p in _perfect(_gt()) if p["bbox"] != [60, 0, 20, 40]]  # one of the three people missed
    m = _score(_gt(), preds)
    # descr: 4 boxes, 3 found first → precision 1 up to recall 0.75: 76 of 101 recall points
    assert m["AP-descr"] == pytest.approx(76 / 101, abs=1e-12)
    assert m["AR-descr"] == pytest.approx(0.75, abs=1e-12)
    assert m["AP-categ"] == 1.0
    assert m["AP-descr-L"] == pytest.approx(67 / 101, abs=1e-12)  # the 11-word description: 2 of 3 boxes
    # "a brown dog on the grass" (6 words): one box, found (1 / (1 + eps), as pycocotools)
    assert m["AP-descr-M"] == pytest.approx(1.0, abs=1e-15)
    assert m["AP-descr-S"] is None  # "a red car" (3 words) is a Dn pair: no box at all → undefined


def test_no_predictions_at_all():
    m = _score(_gt(), [])
    assert m["AP-descr"] == 0.0 and m["AP-categ"] == 0.0 and m["AR-descr"] == 0.0
    assert m["AP"] == 0.0


def test_boxes_on_an_empty_image_or_outside_the_label_space_are_ignored():
    preds = [*_perfect(_gt()), {"image_id": 2, "bbox": [1, 1, 5, 5], "description_ids": [11], "scores": [0.9]},
             {"image_id": 3, "bbox": [1, 1, 5, 5], "description_ids": [10], "scores": [0.9]}]  # image 3: empty
    result = ol.evaluate(ol.parse_gt(_gt()), ol.parse_predictions(preds))
    assert result.metrics["AP-descr"] == 1.0 and result.metrics["AP-categ"] == 1.0
    assert any(n.startswith("2 predicted") and "outside their image's label space" in n for n in result.notes)
    assert ol.parse_gt(_gt()).eval_images()[2].texts == []  # nothing to prompt on an empty image


def test_word_count_groups():
    gt = _gt()
    assert [len(d["text"].split()) for d in gt["descriptions"]] == [1, 6, 3, 1, 11]
    pairs = ol.build_pairs(ol.parse_gt(gt))
    assert pairs.kind.tolist() == ["C", "Dp", "Dn", "C", "Dp"]


def test_skip_categories_prompts_and_scores_descriptions_only():
    gt = ol.parse_gt(_gt(), skip_categories=True)
    assert next(img.texts for img in gt.eval_images()) == ["a brown dog on the grass", "a red car"]
    m = ol.evaluate(gt, ol.parse_predictions(_perfect(_gt()))).metrics
    assert m["AP-descr"] == 1.0 and m["AP-descr-pos"] == 1.0
    assert m["AP-categ"] is None and m["AP"] is None


@pytest.mark.parametrize("seed", range(5))
def test_equals_the_per_pair_pycocotools_evaluator(seed):
    gt = omnilabel_gt(seed, 14, zero_id=seed == 3)
    preds = omnilabel_predictions(gt, seed, per_pair=[8, 30, 120][seed % 3])
    ours = _score(gt, preds)
    ref = reference_evaluate(copy.deepcopy(gt), copy.deepcopy(preds))
    assert 0 < ref["AP-descr"] < 1
    for name, value in ref.items():
        assert (ours[name] if ours[name] is not None else -1.0) == value, name


def test_skip_categories_equals_the_oracle():
    gt = omnilabel_gt(7, 10)
    preds = omnilabel_predictions(gt, 7)
    ours = _score(gt, preds, skip_categories=True)
    ref = reference_evaluate(copy.deepcopy(gt), copy.deepcopy(preds), skip_categories=True)
    assert {k: (v if v is not None else -1.0) for k, v in ours.items()} == ref


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("entry", "message"), [
    ({"image_id": 99, "bbox": [0, 0, 5, 5], "description_ids": [10], "scores": [0.5]}, "image 99 is not in"),
    ({"image_id": 1, "bbox": [0, 0, 5, 5], "description_ids": [77], "scores": [0.5]}, "description 77 is not in"),
    ({"image_id": 1, "bbox": [0, 0, -5, 5], "description_ids": [10], "scores": [0.5]}, "negative width or height"),
    ({"image_id": 1, "bbox": [0, 0, 5, 5], "description_ids": [10], "scores": [float("nan")]}, "finite"),
    ({"image_id": 1, "bbox": [0, 0, 5, 5], "description_ids": [10], "scores": [float("-inf")]}, "finite"),
    ({"image_id": 1, "bbox": [0, 0, 5, 5], "description_ids": [10], "scores": [10 ** 400]}, "finite"),
    ({"image_id": 1, "bbox": [0, 0, 10 ** 400, 5], "description_ids": [10], "scores": [0.5]}, "not finite"),
    ({"image_id": 1, "bbox": [0, 0, 5, 5], "description_ids": [10, 11], "scores": [0.5]}, "2 description ids"),
    ({"image_id": "1", "bbox": [0, 0, 5, 5], "description_ids": [10], "scores": [0.5]}, "integer id"),
    ({"image_id": 1, "bbox": [0, 0, 5], "description_ids": [10], "scores": [0.5]}, "x, y, width, height"),
    ({"image_id": 1, "description_ids": [10], "scores": [0.5]}, "missing"),
])
def test_bad_predictions_name_the_entry(tmp_path, entry, message):
    path = tmp_path / "preds.json"
    path.write_text(json.dumps([*_perfect(_gt()), entry]))
    with pytest.raises(DataError) as err:
        ol.evaluate(ol.parse_gt(_gt()), ol.load_predictions(path), path=str(path))
    text = str(err.value)
    assert message in text and str(path) in text and "predictions[4]" in text, text


def test_bad_ground_truth_names_the_field(tmp_path):
    gt = _gt()
    del gt["descriptions"][1]["anno_info"]
    with pytest.raises(DataError, match=r"descriptions\[1\]\.anno_info\.type"):
        ol.parse_gt(gt)
    path = tmp_path / "gt.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        ol.load_gt(path)


def _set(path, value):
    """A mutation of the ground truth: ``path`` ("annotations", 0, "image_id") set to ``value``."""

    def mutate(gt):
        *parents, last = path
        node = gt
        for key in parents:
            node = node[key]
        node[last] = value
    return mutate


@pytest.mark.parametrize(("path", "value", "field", "message"), [
    (("annotations", 1, "image_id"), "abc", "annotations[1].image_id", "expected an integer id, got 'abc'"),
    (("annotations", 1, "image_id"), "2", "annotations[1].image_id", "expected an integer id, got '2'"),
    (("annotations", 1, "image_id"), None, "annotations[1].image_id", "expected an integer id, got None"),
    (("annotations", 1, "image_id"), 2.7, "annotations[1].image_id", "expected an integer id, got 2.7"),
    (("annotations", 1, "image_id"), True, "annotations[1].image_id", "expected an integer id, got True"),
    (("annotations", 1, "image_id"), 2 ** 70, "annotations[1].image_id", "does not fit in 64 bits"),
    (("annotations", 1, "image_id"), [2], "annotations[1].image_id", "expected an integer id, got [2]"),
    (("annotations", 2, "description_ids"), [20, "x"], "annotations[2].description_ids[1]", "got 'x'"),
    (("annotations", 2, "description_ids"), [2 ** 64], "annotations[2].description_ids[0]", "64 bits"),
    (("annotations", 2, "description_ids"), 20, "annotations[2].description_ids", "expected a list"),
    (("annotations", 2, "description_ids"), [20, 99999], "annotations[2].description_ids[1]",
     "description 99999 is not in 'descriptions' (1 annotation description id(s) like this): correct the id"),
    (("annotations", 0, "description_ids"), [12345], "annotations[0].description_ids[0]", "description 12345"),
    (("annotations", 0, "bbox"), [float("nan"), 1, 5, 5], "annotations[0].bbox", "not finite"),
    (("annotations", 0, "bbox"), [1, 1, 10 ** 400, 5], "annotations[0].bbox", "not finite"),
    (("annotations", 0, "bbox"), [True, 1, 5, 5], "annotations[0].bbox", "4 numbers"),
    (("annotations", 0, "bbox"), [1, 1, -5, 5], "annotations[0].bbox", "negative width or height"),
    (("annotations", 0, "bbox"), 5, "annotations[0].bbox", "4 numbers"),
    (("annotations", 0, "iscrowd"), "no", "annotations[0].iscrowd", "expected 0 or 1, got 'no'"),
    (("descriptions", 3, "image_ids"), ["2"], "descriptions[3].image_ids[0]", "expected an integer id, got '2'"),
    (("descriptions", 3, "image_ids"), [[2]], "descriptions[3].image_ids[0]", "expected an integer id, got [2]"),
    (("descriptions", 3, "image_ids"), [2.0], "descriptions[3].image_ids[0]", "expected an integer id, got 2.0"),
    (("descriptions", 3, "id"), True, "descriptions[3].id", "expected an integer id, got True"),
    (("descriptions", 3, "anno_info", "type"), [1], "descriptions[3].anno_info.type", "expected a string"),
    (("descriptions", 2, "text"), "?", "descriptions[2].text", "'?' has no words once '.' and '?' are removed"),
    (("descriptions", 2, "text"), " . ", "descriptions[2].text", "no words once"),
    (("descriptions", 2, "text"), 5, "descriptions[2].text", "expected a string, got 5"),
    (("images", 1, "id"), 2 ** 63, "images[1].id", "does not fit in 64 bits"),
])
def test_bad_ground_truth_fields_are_named(tmp_path, path, value, field, message):
    """Each bad field stops the reading with the file and the field (no ValueError / OverflowError from numpy,
    no pair silently dropped, no 2.7 read as 2)."""
    gt = _gt()
    _set(path, value)(gt)
    with pytest.raises(DataError) as err:
        ol.parse_gt(gt, "gt.json")
    assert str(err.value).startswith(f"gt.json: {field}: ") and message in str(err.value), str(err.value)


def test_an_unknown_description_on_an_unlisted_image_is_left_out_with_it():
    """A box of a description no entry has is an error (it was dropped silently, changing AP-descr), but not
    on an image ``images`` does not list: that box is left out whatever it names, as a cut-down ground truth
    (descriptions of the images cut left out too) is scored."""
    gt = _gt()
    gt["annotations"].append({"id": 5, "image_id": 99, "bbox": [0, 0, 5, 5], "description_ids": [10, 77]})
    parsed = ol.parse_gt(gt, "gt.json")
    assert "annotations[4].image_id 99" in parsed.notes[0]
    assert ol.evaluate(parsed, ol.parse_predictions(_perfect(_gt()))).metrics["AP-descr"] == 1.0


def test_a_box_outside_its_images_label_space_is_left_out_and_said():
    """The toolkit leaves it out (no pair holds it); it was left out without a word."""
    gt = _gt()
    gt["annotations"].append({"id": 5, "image_id": 1, "bbox": [50, 50, 10, 10], "description_ids": [21]})
    perfect = ol.parse_predictions(_perfect(_gt()))
    result = ol.evaluate(ol.parse_gt(gt, "gt.json"), perfect)
    assert result.notes == ["1 ground-truth box(es) name a description whose image_ids leave out their image (e.g. "
                            "description 21 on image 1): no (image, description) pair holds them, so they were "
                            "left out, as the official toolkit does"]
    assert result.metrics["AP-descr"] == 1.0
    assert ol.evaluate(ol.parse_gt(_gt(), "gt.json"), perfect).notes == []
    skipped = ol.evaluate(ol.parse_gt(_gt(), "gt.json", skip_categories=True), perfect).notes
    assert not any("image_ids leave out" in n for n in skipped)  # categories' boxes: no part of it


def test_huge_ids_read_from_a_file_are_named(tmp_path):
    """The JSON reader gives integers beyond 64 bits as floats: still said to be too large, not a float."""
    gt = _gt()
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt).replace('"image_id": 2,', f'"image_id": {2 ** 70},', 1))
    with pytest.raises(DataError, match=r"annotations\[1\]\.image_id: id 1180591620717411303424 does not fit"):
        ol.load_gt(path)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("description_ids", [True], r"predictions\[4\] \(image_id 1\)\.description_ids\[0\]: expected an integer id, "
                                r"got True"),
    ("image_id", True, r"predictions\[4\]\.image_id: expected an integer id, got True"),
    ("scores", [True], r"predictions\[4\] \(image_id 1\)\.scores\[0\]: expected a number, got True"),
    ("bbox", [0, 0, True, 5], r"predictions\[4\] \(image_id 1\)\.bbox: expected \[x, y, width, height\]"),
])
def test_bools_are_not_numbers_in_predictions(field, value, message):
    """numpy reads [10, true] as [10, 1]: a bool id must not be scored as id 1, nor a bool score as 1.0."""
    entry = {"image_id": 1, "bbox": [0, 0, 5, 5], "description_ids": [10], "scores": [0.5], field: value}
    with pytest.raises(DataError, match=message):
        ol.parse_predictions([*_perfect(_gt()), entry], "p.json")


def test_valid_ground_truth_reads_as_before():
    gt = ol.parse_gt(_gt())
    assert gt.box_image.tolist() == [1, 1, 2, 2, 2, 2, 2]
    assert gt.box_descr.tolist() == [10, 11, 20, 21, 20, 21, 21]
    assert gt.box_xywh[-1].tolist() == [60, 0, 20, 40] and not gt.box_crowd.any() and not gt.box_zero_id.any()


@pytest.mark.parametrize("skip_categories", [False, True])
def test_ground_truth_naming_no_listed_image_is_scored_as_the_toolkit_and_told(skip_categories):
    """The toolkit reads an image's boxes and label space from ``images`` alone: annotations and description
    image ids naming another image are left out (a ground truth cut down to some images scores as the toolkit
    scores it). They are counted in the notes, with the first of each named, where they went unsaid."""
    gt = omnilabel_gt(3, 6)
    gone = gt["images"][2]["id"]
    cut = copy.deepcopy(gt)
    cut["images"] = [img for img in cut["images"] if img["id"] != gone]
    preds = [p for p in omnilabel_predictions(gt, 3) if p["image_id"] != gone]
    first_ann = next(k for k, a in enumerate(gt["annotations"]) if a["image_id"] == gone)
    n_ann = sum(a["image_id"] == gone for a in gt["annotations"])
    first_descr = next(k for k, d in enumerate(gt["descriptions"]) if gone in d["image_ids"])
    n_descr = sum(d["image_ids"].count(gone) for d in gt["descriptions"])
    cut["descriptions"][first_descr]["image_ids"].insert(0, 12345)  # and one naming an image that never was

    ours = ol.evaluate(ol.parse_gt(copy.deepcopy(cut), skip_categories=skip_categories), ol.parse_predictions(preds))
    ref = reference_evaluate(copy.deepcopy(cut), copy.deepcopy(preds), skip_categories=skip_categories)
    assert {k: (v if v is not None else -1.0) for k, v in ours.metrics.items()} == ref
    assert ours.notes[0] == (f"{n_ann} annotation(s) (first: annotations[{first_ann}].image_id {gone}) and "
                             f"{n_descr + 1} description image id(s) (first: descriptions[{first_descr}].image_ids[0] "
                             "12345) name no image of 'images'; left out of the scores, as the official toolkit "
                             "leaves them"), ours.notes
    assert not any("no image of" in n for n in ol.evaluate(ol.parse_gt(copy.deepcopy(gt)),
                                                           ol.parse_predictions(preds)).notes)


def test_any_finite_score_ranks():
    """Scores only rank: outside [0, 1] (logits, negative, large) they are read and scored as their order says."""
    gt = omnilabel_gt(4, 5)
    preds = omnilabel_predictions(gt, 4)
    for rescale in (lambda s: 1e30 * s, lambda s: -1 / s):  # the same order, far outside [0, 1]
        rescaled = copy.deepcopy(preds)
        for p in rescaled:
            p["scores"] = [rescale(s) for s in p["scores"]]
        assert _score(gt, rescaled) == _score(gt, preds)
