import gzip
import json
import random

import orjson
import pytest
from pycocotools.coco import COCO

from reallod.data import Record, read_records, write_records
from reallod.data.convert import (
    JsonSectionsWriter,
    coco_to_realdata,
    realdata_to_coco,
    realdata_to_odvg,
    realdata_to_omnilabel,
)
from reallod.data.convert_coco import coco_to_records, image_filename
from reallod.data.convert_odvg import record_to_odvg, sanitize_phrase
from reallod.data.convert_omnilabel import record_to_omnilabel
from reallod.errors import DataError
from tests.cli_helpers import run_cli

DOG = [10, 20, 110, 220]
CAT = [200, 40, 300, 140]
CAT2 = [320, 40, 400, 140]

IMAGE = {
    "filename": "o365/patch0/img1.jpg", "height": 480, "width": 640,
    "pairs": {
        "vlm_short": [
            {"bboxes": [DOG], "category": "dog", "relation": "single",
             "positive_expressions": ["a brown dog.", "the dog on the left"],
             "negative_expressions": ["a black dog", "two cats sitting", "a white rabbit?"]},
            {"bboxes": [CAT, CAT2], "category": "cat", "relation": "multi",
             "positive_expressions": ["two cats sitting"], "negative_expressions": ["three cats"]},
        ],
        "llm": {"bboxes": [DOG], "category": "dog", "relation": "single",
                "postive_expressions": ["a dog looking at the camera"], "negative_expressions": ["a sleeping dog"]},
    },
}
OTHER = {
    "filename": "o365/patch0/img2.jpg", "height": 100, "width": 200,
    "pairs": {"vlm_long": [{"bboxes": [[0, 0, 50, 50]], "category": "Cup", "relation": "single",
                            "positive_expressions": ["a red cup"], "negative_expressions": []}]},
}


@pytest.fixture
def realdata(tmp_path):
    path = tmp_path / "in.jsonl"
    write_records(path, [IMAGE, OTHER])
    return path


def load_jsonl(path):
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


# ---------------------------------------------------------------------------------------------- ODVG


def test_sanitize_phrase_removes_prompt_separators():
    assert sanitize_phrase(" the dog. It is brown?! ") == "the dog It is brown !"
    assert sanitize_phrase("...") == ""
    assert sanitize_phrase("a cup, ") == "a cup"


def test_odvg_one_line_per_source_with_exact_spans():
    lines = record_to_odvg(Record.from_dict(IMAGE), max_negatives=-1)
    assert [line["source"] for line in lines] == ["vlm_short", "llm"]
    short = lines[0]
    g = short["grounding"]
    assert short["filename"] == IMAGE["filename"] and (short["height"], short["width"]) == (480, 640)
    # first positive per pair, '.' removed; a group keeps all its boxes
    assert [r["phrase"] for r in g["regions"]] == ["a brown dog", "two cats sitting"]
    assert g["regions"][0]["bbox"] == DOG and g["regions"][1]["bbox"] == [CAT, CAT2]
    for region in g["regions"]:
        (start, end), = region["tokens_positive"]
        assert g["caption"][start:end] == region["phrase"]
    # "two cats sitting" is a negative of the dog but a positive of the cats: never a negative;
    # "a white rabbit?" is sanitised; a positive of another source is no negative either
    assert g["caption"] == "a brown dog. two cats sitting. a black dog. a white rabbit. three cats."
    assert lines[1]["grounding"]["caption"] == "a dog looking at the camera. a sleeping dog."


def test_odvg_negative_equal_to_positive_of_other_source_is_dropped():
    rec = Record.from_dict({**IMAGE, "pairs": {
        "vlm_short": [{"bboxes": [DOG], "category": "dog", "positive_expressions": ["a dog"],
                       "negative_expressions": ["A  Dog looking at the camera", "a cat"]}],
        "llm": [{"bboxes": [DOG], "category": "dog", "positive_expressions": ["a dog looking at the camera"]}]}})
    assert record_to_odvg(rec)[0]["grounding"]["caption"] == "a dog. a cat."


def test_odvg_options_merge_sources_all_positives_caps_and_category_source():
    rec = Record.from_dict(IMAGE)
    merged = record_to_odvg(rec, per_source=False, positives=0, max_negatives=2)
    assert len(merged) == 1 and "source" not in merged[0]
    phrases = [r["phrase"] for r in merged[0]["grounding"]["regions"]]
    assert phrases == ["a brown dog", "the dog on the left", "two cats sitting", "a dog looking at the camera"]
    assert merged[0]["grounding"]["caption"].endswith("a dog looking at the camera. a black dog. a white rabbit.")

    only_llm = record_to_odvg(rec, sources=["llm"], category_source=True, max_negatives=0)
    assert [line["source"] for line in only_llm] == ["llm", "category"]
    assert only_llm[0]["grounding"]["caption"] == "a dog looking at the camera."
    cats = only_llm[1]["grounding"]
    assert cats["caption"] == "dog." and cats["regions"][0]["bbox"] == DOG  # category of the llm pairs only


def test_odvg_seeded_choice_is_deterministic_and_from_the_pair():
    rec = Record.from_dict(IMAGE)
    a = record_to_odvg(rec, rng=random.Random(7), max_negatives=-1)
    b = record_to_odvg(rec, rng=random.Random(7), max_negatives=-1)
    assert a == b
    first = a[0]["grounding"]["regions"][0]["phrase"]
    assert first in {"a brown dog", "the dog on the left"}


def test_odvg_file_loads_like_mmdet_odvg_dataset(realdata, tmp_path):
    out = tmp_path / "train_odvg.jsonl.gz"
    stats = realdata_to_odvg(realdata, out)
    assert (stats.records_in, stats.records_out) == (2, 3)
    lines = [json.loads(line) for line in gzip.decompress(out.read_bytes()).splitlines()]
    # mmdet's ODVGDataset (VG mode): text = caption; bbox is one box or a list; tokens_positive spans
    for line in lines:
        text = line["grounding"]["caption"]
        for region in line["grounding"]["regions"]:
            boxes = region["bbox"] if isinstance(region["bbox"][0], list) else [region["bbox"]]
            for x1, y1, x2, y2 in boxes:
                assert 0 <= x1 < x2 <= line["width"] and 0 <= y1 < y2 <= line["height"]
            assert [text[s:e] for s, e in region["tokens_positive"]] == [region["phrase"]]


# ---------------------------------------------------------------------------------------------- COCO


def test_coco_out_is_loadable_and_keeps_expressions(realdata, tmp_path):
    out = tmp_path / "coco.json"
    stats = realdata_to_coco(realdata, out)
    assert stats.items_out == {"annotations": 4, "groups": 1, "categories": 3}
    coco = COCO(str(out))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["dog", "cat", "Cup"]
    img1 = coco.imgs[1]
    assert img1["file_name"] == IMAGE["filename"] and (img1["height"], img1["width"]) == (480, 640)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    dog = [a for a in anns if a["category_id"] == 1]
    assert len(dog) == 1  # the dog box from two sources is one ground-truth box
    assert dog[0]["bbox"] == [10, 20, 100, 200] and dog[0]["area"] == 20000
    assert dog[0]["sources"] == ["vlm_short", "llm"]
    assert dog[0]["expressions"] == ["a brown dog.", "the dog on the left", "a dog looking at the camera"]
    assert "a sleeping dog" in dog[0]["negative_expressions"]
    assert sorted(a["bbox"][0] for a in anns if a["category_id"] == 2) == [200, 320]


def test_coco_source_selection_and_empty_images(realdata, tmp_path):
    out = tmp_path / "coco.json"
    stats = realdata_to_coco(realdata, out, sources=["llm"])
    data = json.loads(out.read_text())
    assert [i["file_name"] for i in data["images"]] == [IMAGE["filename"]]
    assert stats.skipped == {"images with no pair of the chosen sources": 1}
    realdata_to_coco(realdata, out, sources=["llm"], keep_empty=True)
    assert len(json.loads(out.read_text())["images"]) == 2


COCO_GT = {
    "images": [{"id": 5, "file_name": "000000000005.jpg", "height": 100, "width": 200},
               {"id": 9, "file_name": "000000000009.jpg", "height": 50, "width": 50},
               {"id": 11, "file_name": "000000000011.jpg", "height": 50, "width": 50}],
    "annotations": [
        {"id": 1, "image_id": 5, "category_id": 3, "bbox": [10, 10, 20, 30], "iscrowd": 0, "area": 500},
        {"id": 2, "image_id": 5, "category_id": 7, "bbox": [150, 80, 80, 40.5], "iscrowd": 0},  # past the edge
        {"id": 3, "image_id": 9, "category_id": 3, "bbox": [0, 0, 50, 50], "iscrowd": 1},
        {"id": 4, "image_id": 9, "category_id": 3, "bbox": [1, 1, 2, 2], "iscrowd": 0},
        {"id": 5, "image_id": 9, "category_id": 3, "bbox": [4, 4, 0, 5], "iscrowd": 0},
    ],
    "categories": [{"id": 3, "name": "person"}, {"id": 7, "name": "traffic light"}],
}


def test_from_coco_builds_category_skeleton(tmp_path):
    ann = tmp_path / "instances.json"
    ann.write_bytes(orjson.dumps(COCO_GT))
    out = tmp_path / "skeleton.jsonl.gz"
    stats = coco_to_realdata(ann, out, skip_crowd=True, min_area=5)
    recs = list(read_records(out))
    assert [r.filename for r in recs] == ["000000000005.jpg"]  # image 9 lost every box, 11 had none
    pairs = recs[0].pairs["category"]
    assert [(p.category, p.positive_expressions, p.relation) for p in pairs] == [
        ("person", ["person"], "single"), ("traffic light", ["traffic light"], "single")]
    assert pairs[0].bboxes == [[10, 10, 30, 40]]  # xywh → xyxy
    assert pairs[1].bboxes == [[150, 80, 200, 100]]  # clamped to the 200x100 image
    assert recs[0].extra == {"image_id": 5}
    assert stats.skipped == {"crowd boxes": 1, "boxes under the minimum area": 1, "boxes with no area": 1,
                             "images with no box": 2}
    assert stats.notes == {"boxes clamped to the image": 1}


def test_from_coco_lvis_style(tmp_path):
    lvis = {
        "images": [{"id": 1, "height": 60, "width": 80,
                    "coco_url": "http://images.cocodataset.org/val2017/000000000001.jpg"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}],  # no iscrowd
        "categories": [{"id": 1, "name": "bow_(weapon)", "synonyms": ["bow_(weapon)", "longbow"]}],
    }
    recs = list(coco_to_records(lvis, skip_crowd=True, synonyms=True, prefix="coco"))
    assert recs[0].filename == "coco/val2017/000000000001.jpg"
    assert recs[0].pairs["category"][0].positive_expressions == ["bow (weapon)", "longbow"]
    assert recs[0].pairs["category"][0].category == "bow (weapon)"
    assert image_filename({"file_name": "a/b.jpg", "coco_url": "x"}) == "a/b.jpg"


@pytest.mark.parametrize(("data", "field", "message"), [
    ({"images": [], "annotations": []}, "categories", "missing"),
    ({"images": {}, "annotations": [], "categories": []}, "images", "expected a list"),
    ({**COCO_GT, "annotations": [{"image_id": 5, "category_id": 99, "bbox": [0, 0, 1, 1]}]},
     "annotations[0].category_id", "category id 99 is not in categories"),
    ({**COCO_GT, "annotations": [{"image_id": 6, "category_id": 3, "bbox": [0, 0, 1, 1]}]},
     "annotations[0].image_id", "image id 6 is not in images"),
    ({**COCO_GT, "annotations": [{"image_id": 5, "category_id": 3, "bbox": [0, 0, "1", 1]}]},
     "annotations[0].bbox", "expected [x, y, w, h]"),
    ({**COCO_GT, "images": [{"id": 5, "file_name": "a.jpg", "width": 10}]}, "images[0].height", "missing"),
    ({**COCO_GT, "categories": [{"id": 3, "name": ""}]}, "categories[0].name", "non-empty string"),
    ({**COCO_GT, "images": [{"id": 5, "height": 10, "width": 10}], "annotations": []},
     "images[0].file_name", "no coco_url"),
])
def test_from_coco_errors_name_the_field(data, field, message):
    with pytest.raises(DataError) as exc:
        list(coco_to_records(data, path="ann.json", keep_empty=True))
    assert exc.value.path == "ann.json" and exc.value.field == field and message in exc.value.message


def test_roundtrip_realdata_coco_realdata(realdata, tmp_path):
    coco = tmp_path / "coco.json"
    realdata_to_coco(realdata, coco)
    back = tmp_path / "back.jsonl"
    coco_to_realdata(coco, back)
    recs = list(read_records(back))
    assert [r.filename for r in recs] == [IMAGE["filename"], OTHER["filename"]]
    boxes = sorted((p.category, tuple(p.bboxes[0])) for p in recs[0].pairs["category"])
    assert boxes == [("cat", tuple(CAT)), ("cat", tuple(CAT2)), ("dog", tuple(DOG))]


# ---------------------------------------------------------------------------------------------- OmniLabel


def test_omnilabel_positives_have_boxes_and_negatives_have_none():
    rec = Record.from_dict(IMAGE)
    image, descs, anns = record_to_omnilabel(rec, 3, 10, 100)
    assert image == {"id": 3, "file_name": IMAGE["filename"], "height": 480, "width": 640}
    by_text = {d["text"]: d for d in descs}
    assert all(d["image_ids"] == [3] and d["anno_info"]["type"] == "object_description" for d in descs)
    assert [d["id"] for d in descs] == list(range(10, 10 + len(descs)))
    refers = {}
    for a in anns:
        for did in a["description_ids"]:
            refers.setdefault(did, []).append(a["bbox"])
    assert refers[by_text["a brown dog."]["id"]] == [[10, 20, 100, 200]]
    assert sorted(refers[by_text["two cats sitting"]["id"]]) == [[200, 40, 100, 100], [320, 40, 80, 100]]
    for neg in ("a black dog", "a white rabbit?", "three cats", "a sleeping dog"):
        assert by_text[neg]["id"] not in refers
    # "two cats sitting" is a negative of the dog yet a positive of the cats: it stays a positive only
    assert sum(d["text"] == "two cats sitting" for d in descs) == 1
    assert len(anns) == 3 and [a["id"] for a in anns] == [100, 101, 102]


def test_omnilabel_categories_and_category_source_are_type_c():
    rec = Record.from_dict({"filename": "x.jpg", "height": 10, "width": 10, "pairs": {
        "category": [{"bboxes": [[0, 0, 5, 5]], "category": "dog", "positive_expressions": ["dog"]}],
        "llm": [{"bboxes": [[5, 5, 9, 9]], "category": "cat", "positive_expressions": ["a grey cat"]}]}})
    _, descs, anns = record_to_omnilabel(rec, 1, 1, 1, categories=True)
    kinds = {(d["text"], d["anno_info"]["type"]) for d in descs}
    assert kinds == {("dog", "object_class"), ("a grey cat", "object_description"), ("cat", "object_class")}
    assert {len(a["description_ids"]) for a in anns} == {1, 2}


def test_omnilabel_file(realdata, tmp_path):
    out = tmp_path / "gt.json"
    stats = realdata_to_omnilabel(realdata, out)
    data = json.loads(out.read_text())
    assert list(data) == ["info", "images", "descriptions", "annotations"]
    assert "omnilabel" not in data["info"]["name"].lower()
    assert [i["id"] for i in data["images"]] == [1, 2]
    ids = [d["id"] for d in data["descriptions"]]
    assert ids == list(range(1, len(ids) + 1))
    assert {d["image_ids"][0] for d in data["descriptions"] if d["text"] == "a red cup"} == {2}
    assert stats.items_out["annotations"] == len(data["annotations"]) == 4
    assert stats.skipped == {"negatives that are also positives of the image": 1}


# ---------------------------------------------------------------------------------------------- writer and CLI


def test_sections_writer_is_atomic_and_leaves_no_spool(tmp_path):
    out = tmp_path / "doc.json"
    out.write_text("old")
    with pytest.raises(RuntimeError), JsonSectionsWriter(out, ["a", "b"]) as w:
        w.add("b", {"x": 1})
        w.add("a", 1)
        raise RuntimeError("crash")
    assert out.read_text() == "old" and list(tmp_path.iterdir()) == [out]
    with JsonSectionsWriter(out, ["a", "b", "c"], header={"info": {}}) as w:
        w.add("b", 2)
        w.add("a", 1)
        w.add("b", 3)
    assert json.loads(out.read_text()) == {"info": {}, "a": [1], "b": [2, 3], "c": []}
    assert list(tmp_path.iterdir()) == [out]


def test_cli_convert_commands(realdata, tmp_path, capsys):
    code, out, _ = run_cli(["data", "convert", "odvg", realdata, tmp_path / "o.jsonl", "-s", "vlm_short",
                            "--positives", "0", "--seed", "1"], capsys)
    assert code == 0 and "2 records read, 1 lines written, 3 regions" in out
    code, out, _ = run_cli(["data", "convert", "coco", realdata, tmp_path / "c.json"], capsys)
    assert code == 0 and "4 annotations, 1 groups, 3 categories" in out
    code, out, _ = run_cli(["data", "convert", "omnilabel", realdata, tmp_path / "g.json", "--categories"], capsys)
    assert code == 0 and "2 written" in out
    code, out, _ = run_cli(["data", "convert", "from-coco", tmp_path / "c.json", tmp_path / "s.jsonl",
                            "--prefix", "imgs"], capsys)
    assert code == 0 and "2 images read, 2 written, 4 boxes" in out
    assert next(iter(read_records(tmp_path / "s.jsonl"))).filename == "imgs/" + IMAGE["filename"]


def test_cli_errors_are_one_line_with_location(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(OTHER) + "\n" + '{"filename": "a.jpg", "height": 0, "width": 5, "pairs": {}}\n')
    out = tmp_path / "o.jsonl"
    code, _, err = run_cli(["data", "convert", "odvg", bad, out], capsys)
    assert code == 2 and err.strip() == f"error: {bad}:2: height: expected a positive integer, got 0"
    assert not out.exists()  # nothing half-written
    code, _, err = run_cli(["data", "convert", "from-coco", tmp_path / "missing.json", out], capsys)
    assert code == 2 and err.strip() == f"error: {tmp_path / 'missing.json'}: no such file"
    notjson = tmp_path / "x.json"
    notjson.write_text("{")
    code, _, err = run_cli(["data", "convert", "from-coco", notjson, out], capsys)
    assert code == 2 and err.startswith(f"error: {notjson}: invalid JSON") and "Traceback" not in err
    fake_gz = tmp_path / "x.json.gz"
    fake_gz.write_text("{}")
    code, _, err = run_cli(["data", "convert", "from-coco", fake_gz, out], capsys)
    assert code == 2 and "not a gzip file" in err
    code, out_text, _ = run_cli(["data", "convert", "odvg", "--help"], capsys)
    assert code == 0 and "--max-negatives" in out_text


# ------------------------------------------------------------------------------------------- audit


def test_coco_keeps_a_group_expression_on_the_group_not_on_each_box(tmp_path):
    """'the two dogs' (a multi pair) was put on each of its boxes' annotations as if each were two dogs."""
    src, out = tmp_path / "m.jsonl", tmp_path / "m.json"
    left, right = [1, 2, 30, 40], [100, 100, 150, 160]
    write_records(src, [{"filename": "m.jpg", "height": 480, "width": 640, "pairs": {
        "llm": [{"bboxes": [left, right], "category": "dog", "relation": "multi",
                 "positive_expressions": ["the two dogs"], "negative_expressions": ["three cats"]},
                {"bboxes": [left], "category": "dog", "relation": "single",
                 "positive_expressions": ["the small dog on the left"], "negative_expressions": []}],
        "vlm_short": [{"bboxes": [left, right], "category": "dog", "relation": "multi",
                       "positive_expressions": ["two dogs", "The two dogs"], "negative_expressions": []}]}}])
    stats = realdata_to_coco(src, out)
    assert stats.items_out == {"annotations": 2, "groups": 1, "categories": 1}
    data = json.loads(out.read_text())
    first, second = data["annotations"]
    assert first["expressions"] == ["the small dog on the left"] and second["expressions"] == []
    assert first["group_ids"] == second["group_ids"] == [1]
    assert first["sources"] == ["llm", "vlm_short"]
    assert data["groups"] == [{"id": 1, "image_id": 1, "category_id": 1, "annotation_ids": [1, 2],
                               "expressions": ["the two dogs", "two dogs"], "negative_expressions": ["three cats"],
                               "sources": ["llm", "vlm_short"]}]
    COCO(str(out))  # still a detection ground truth pycocotools loads


def test_odvg_category_source_alone_is_built_from_every_source(realdata, tmp_path, capsys):
    """`-s category --category-source` always failed 'none gave an ODVG line': the category pairs were built
    from the chosen sources' pairs, and the only one chosen was 'category', which the file lacks."""
    rec = Record.from_dict(IMAGE)
    lines = record_to_odvg(rec, sources=["category"], category_source=True)
    assert [line["source"] for line in lines] == ["category"]
    assert [r["phrase"] for r in lines[0]["grounding"]["regions"]] == ["dog", "cat"]
    out = tmp_path / "c.jsonl"
    code, stdout, err = run_cli(["data", "convert", "odvg", realdata, out, "-s", "category", "--category-source"],
                                capsys)
    assert code == 0 and "2 records read, 2 lines written" in stdout, err
    assert {line["source"] for line in map(json.loads, out.read_text().splitlines())} == {"category"}


def test_odvg_never_writes_a_positive_of_the_image_as_a_negative_in_another_unicode_form():
    """'café dog' (NFC) a positive of one source, 'cafe\u0301 dog' (NFD) a negative of another: both went
    into the captions, the negative equal to the positive to the eye and to the model."""
    rec = Record.from_dict({"filename": "z.jpg", "height": 10, "width": 10, "pairs": {
        "llm": [{"bboxes": [[1, 1, 5, 5]], "category": "dog", "positive_expressions": ["a dog"],
                 "negative_expressions": ["cafe\u0301 dog", "a cat"]}],
        "vlm_short": [{"bboxes": [[3, 3, 7, 7]], "category": "dog", "positive_expressions": ["café dog", "Café  Dog"]}]}})
    llm, vlm = record_to_odvg(rec, positives=0, max_negatives=-1)
    assert llm["grounding"]["caption"] == "a dog. a cat."
    assert vlm["grounding"]["caption"] == "café dog."


def test_convert_odvg_refuses_an_invisible_expression(tmp_path, capsys):
    src = tmp_path / "z.jsonl"
    write_records(src, [{"filename": "z.jpg", "height": 10, "width": 10, "pairs": {"llm": [
        {"bboxes": [[1, 1, 5, 5]], "category": "dog", "positive_expressions": ["\u200b"]}]}}])
    code, _, err = run_cli(["data", "convert", "odvg", src, tmp_path / "o.jsonl", "--positives", "0"], capsys)
    assert code == 2 and err.startswith(f"error: {src}:1: pairs.llm[0].positive_expressions[0]: expression '\\u200b' "
                                             "has only zero-width")
    assert not (tmp_path / "o.jsonl").exists()
