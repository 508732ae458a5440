"""Converters refuse inputs they would corrupt, and write outputs that the other tools accept."""

import json
import re
from pathlib import Path

import orjson
import pytest

from reallod.data import Record, read_records, write_records
from reallod.data.convert import coco_to_realdata, realdata_to_coco, realdata_to_omnilabel
from reallod.data.convert_coco import coco_to_records
from reallod.data.convert_common import xyxy_to_xywh
from reallod.data.convert_omnilabel import record_to_omnilabel
from reallod.errors import DataError
from tests.cli_helpers import run_cli

DOCS = Path(__file__).resolve().parents[2] / "docs" / "data.md"


def _coco(images=None, categories=None):
    return {
        "images": images or [{"id": 1, "height": 10, "width": 10, "file_name": "a.jpg"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}],
        "categories": categories or [{"id": 1, "name": "cat"}],
    }


# ---------------------------------------------------------------------------------------------- from-coco ids


@pytest.mark.parametrize(("data", "field", "message"), [
    (_coco(images=[{"id": 1, "height": 10, "width": 10, "file_name": "a.jpg"},
                   {"id": 2, "height": 10, "width": 10, "file_name": "c.jpg"},
                   {"id": 1, "height": 20, "width": 20, "file_name": "b.jpg"}]),
     "images[2].id", "id 1 already used by images[0]"),
    (_coco(categories=[{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 2, "name": "cow"}]),
     "categories[2].id", "id 2 already used by categories[1]"),
])
def test_from_coco_refuses_duplicate_ids(data, field, message):
    with pytest.raises(DataError) as exc:
        list(coco_to_records(data, path="ann.json"))
    assert exc.value.path == "ann.json" and exc.value.field == field and message in exc.value.message


@pytest.mark.parametrize(("change", "field", "message"), [
    (lambda d: d["annotations"].__setitem__(0, None), "annotations[0]", "expected an object, got null"),
    (lambda d: d.__setitem__("images", {"id": 1}), "images", "expected a list, got an object"),
    (lambda d: d["annotations"].__setitem__(0, 7), "annotations[0]", "expected an object, got the number 7"),
])
def test_from_coco_names_a_wrong_kind_in_json_words(change, field, message):
    """It said Python's names: "expected an object, got NoneType"."""
    data = _coco()
    change(data)
    with pytest.raises(DataError) as exc:
        list(coco_to_records(data, path="ann.json"))
    assert exc.value.field == field and exc.value.message == message


def test_cli_from_coco_duplicate_id_names_the_file_and_writes_nothing(tmp_path, capsys):
    src = tmp_path / "dup.json"
    src.write_bytes(orjson.dumps(_coco(images=[{"id": 1, "height": 10, "width": 10, "file_name": "a.jpg"},
                                               {"id": 1, "height": 20, "width": 20, "file_name": "b.jpg"}])))
    out = tmp_path / "out.jsonl"
    code, _, err = run_cli(["data", "convert", "from-coco", src, out], capsys)
    assert code == 2 and err.startswith(f"error: {src}: images[1].id: id 1 already used by images[0]")
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- from-coco names


@pytest.mark.parametrize("name", ["__", "_ _"])
def test_from_coco_refuses_a_category_name_with_no_expression(tmp_path, capsys, name):
    with pytest.raises(DataError) as exc:
        list(coco_to_records(_coco(categories=[{"id": 1, "name": name}]), path="ann.json"))
    assert exc.value.field == "categories[0].name" and "empty expression" in exc.value.message
    src = tmp_path / "us.json"
    src.write_bytes(orjson.dumps(_coco(categories=[{"id": 1, "name": name}])))
    code, _, err = run_cli(["data", "convert", "from-coco", src, tmp_path / "out.jsonl"], capsys)
    assert code == 2 and f"{src}: categories[0].name:" in err and not (tmp_path / "out.jsonl").exists()


def test_from_coco_output_converts_on_to_odvg(tmp_path, capsys):
    src = tmp_path / "lvis.json"
    src.write_bytes(orjson.dumps(_coco(categories=[{"id": 1, "name": "_bow_(weapon)_"}])))
    coco_to_realdata(src, tmp_path / "s.jsonl")
    code, _, err = run_cli(["data", "convert", "odvg", tmp_path / "s.jsonl", tmp_path / "o.jsonl"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "o.jsonl").read_text())["grounding"]["caption"] == "bow (weapon)."


# ---------------------------------------------------------------------------------------------- OmniLabel -s


XSRC = {"filename": "a.jpg", "height": 100, "width": 100, "pairs": {
    "vlm_short": [{"bboxes": [[0, 0, 50, 50]], "category": "dog", "positive_expressions": ["brown dog"]}],
    "llm": [{"bboxes": [[50, 50, 100, 100]], "category": "cat", "positive_expressions": ["white cat"],
             "negative_expressions": ["Brown  Dog", "a red car"]}]}}


def test_omnilabel_source_choice_keeps_no_negative_another_source_sees():
    _, descs, anns = record_to_omnilabel(Record.from_dict(XSRC), 1, 1, 1, sources=["llm"])
    assert [d["text"] for d in descs] == ["white cat", "a red car"]  # "brown dog" is in the image
    assert [a["bbox"] for a in anns] == [[50, 50, 50, 50]]
    # with --categories, a category name of an unchosen pair is in the image too
    rec = Record.from_dict({**XSRC, "pairs": {**XSRC["pairs"], "llm": [
        {**XSRC["pairs"]["llm"][0], "negative_expressions": ["dog", "a red car"]}]}})
    _, descs, _ = record_to_omnilabel(rec, 1, 1, 1, sources=["llm"], categories=True)
    assert [d["text"] for d in descs] == ["white cat", "cat", "a red car"]


def test_cli_omnilabel_source_choice_counts_the_dropped_negative(tmp_path, capsys):
    src = tmp_path / "x.jsonl"
    write_records(src, [XSRC])
    out = tmp_path / "g.json"
    code, text, _ = run_cli(["data", "convert", "omnilabel", src, out, "-s", "llm"], capsys)
    assert code == 0 and "1 negatives that are also positives of the image" in text
    assert "brown dog" not in out.read_text().casefold()


# ---------------------------------------------------------------------------------------------- ODVG + mmdet


def test_odvg_docs_and_help_give_mmdet_plain_text():
    odvg_lines = [line for line in DOCS.read_text().splitlines() if "data convert odvg" in line]
    assert odvg_lines and not any(".gz" in line for line in odvg_lines)
    assert "ODVGDataset reads the file as plain text" in DOCS.read_text()


def test_cli_odvg_help_says_mmdet_reads_plain_text(capsys):
    code, text, _ = run_cli(["data", "convert", "odvg", "--help"], capsys)
    flat = " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())
    assert code == 0 and "mmdet's ODVGDataset reads plain text only" in flat


# ---------------------------------------------------------------------------------------------- rounding


@pytest.mark.parametrize(("box", "xywh"), [
    ([10.0001, 0, 10.0004, 5], [10, 0, 0.001, 5]),  # both ends round down to 10.0
    ([19.9996, 0, 19.9999, 5], [19.999, 0, 0.001, 5]),  # both round up to 20.0: step below, inside the image
    ([1.2344, 2.0001, 1.2346, 2.0002], [1.234, 2, 0.001, 0.001]),
    ([0.1, 0.2, 0.4, 0.7], [0.1, 0.2, 0.3, 0.5]),  # ends rounded, not the width: no float noise
    ([10, 20, 110, 220], [10, 20, 100, 200]),
])
def test_xyxy_to_xywh_keeps_a_box_with_area(box, xywh):
    assert xyxy_to_xywh(box) == xywh


def test_tiny_boxes_survive_coco_and_omnilabel_and_convert_back(tmp_path):
    boxes = [[10.0001, 0, 10.0004, 5], [19.9996, 1, 19.9999, 1.0002]]
    src = tmp_path / "tiny.jsonl"
    write_records(src, [{"filename": "a.jpg", "height": 10, "width": 20, "pairs": {"llm": [
        {"bboxes": [b], "category": "hair", "positive_expressions": [f"hair {i}"]} for i, b in enumerate(boxes)]}}])
    coco = tmp_path / "c.json"
    realdata_to_coco(src, coco)
    anns = json.loads(coco.read_text())["annotations"]
    for a in anns:
        x, y, w, h = a["bbox"]
        assert w > 0 and h > 0 and x + w <= 20 and y + h <= 10
        assert a["area"] > 0 and a["area"] == pytest.approx(w * h)
    back = tmp_path / "back.jsonl"
    stats = coco_to_realdata(coco, back)
    assert not stats.skipped and len(next(iter(read_records(back))).pairs["category"]) == 2
    gt = tmp_path / "g.json"
    realdata_to_omnilabel(src, gt)
    assert all(a["bbox"][2] > 0 and a["bbox"][3] > 0 for a in json.loads(gt.read_text())["annotations"])
