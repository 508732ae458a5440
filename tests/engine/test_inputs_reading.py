"""What the engine reads from its inputs: categories in the image whatever became of their boxes, LVIS
negatives, OpenImages CSVs with a BOM, gzipped or broken, dropped boxes reported, odd category names."""

import gzip
import json
from pathlib import Path

import pytest
from PIL import Image

import reallod.engine.pipeline as pl
from reallod.data.convert_coco import coco_to_records
from reallod.engine.annotations import read_annotations
from reallod.engine.generate import GenerateSettings
from reallod.engine.negatives import easy_negatives, replace_category
from reallod.engine.pipeline import GenerateOptions, generate
from reallod.engine.text import check, mentions
from reallod.errors import DataError
from tests.agent.scripted import scripted_roles
from tests.cli_helpers import run_cli
from tests.engine.scripted_models import generation_answers

OI_HEADER = "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf\n"


def image(root: Path, name: str = "a.jpg", size: tuple[int, int] = (400, 300)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 90, 60)).save(root / name)
    return root


def write_coco(path: Path, categories: list[str], annotations: list[dict], **image_fields) -> Path:
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 400, "height": 300, **image_fields}],
            "categories": [{"id": i, "name": n} for i, n in enumerate(categories, 1)],
            "annotations": [{"id": i, "image_id": 1, **a} for i, a in enumerate(annotations, 1)]}
    path.write_text(json.dumps(data))
    return path


def negatives_of(tmp_path: Path, ann: Path, *, classes: Path | None = None, easy: int = 3, **kw) -> dict[str, list]:
    out = tmp_path / "out.jsonl"
    opts = GenerateOptions(ann, tmp_path / "img", "offline", out, classes=classes,
                           settings=GenerateSettings(easy_negatives=easy, hard_negatives=0), **kw)
    generate(opts, roles=scripted_roles(generation_answers(), vlm=False))
    rec = json.loads(out.read_text().splitlines()[0])
    return {p["category"]: p["negative_expressions"] for p in rec["pairs"]["llm"]}


def test_easy_negatives_never_name_a_category_whose_boxes_were_skipped(tmp_path):
    image(tmp_path / "img")
    ann = write_coco(tmp_path / "ann.json", ["dog", "person", "kite", "zebra"], [
        {"category_id": 1, "bbox": [10, 10, 100, 100]},
        {"category_id": 2, "bbox": [200, 50, 150, 200], "iscrowd": 1},  # a crowd: skipped, still people
        {"category_id": 3, "bbox": [300, 10, 4, 4]}])  # under --min-box-area: skipped, still a kite
    negs = negatives_of(tmp_path, ann, min_area=100)
    assert negs["dog"] and all("zebra" in n for n in negs["dog"]), negs


def test_lvis_easy_negatives_come_from_neg_category_ids_only(tmp_path):
    image(tmp_path / "img")
    ann = write_coco(tmp_path / "lvis.json", ["person", "shoe", "shirt", "zebra", "giraffe"], [
        {"category_id": 1, "bbox": [10, 10, 100, 200]}, {"category_id": 2, "bbox": [20, 200, 30, 20]}],
        neg_category_ids=[4], not_exhaustive_category_ids=[3])
    negs = negatives_of(tmp_path, ann)
    # shirt is not exhaustively annotated (it may be there), giraffe was never checked: only zebra
    assert negs["person"] and all("zebra" in n for n in negs["person"] + negs["shoe"]), negs
    anns = read_annotations(ann, tmp_path / "img")
    assert anns.images[0].present == ["person", "shirt", "shoe"] and anns.images[0].absent == ["zebra"]


def test_lvis_neg_category_ids_must_name_categories(tmp_path):
    image(tmp_path / "img")
    ann = write_coco(tmp_path / "lvis.json", ["person"], [{"category_id": 1, "bbox": [10, 10, 100, 200]}],
                     neg_category_ids=[9])
    with pytest.raises(DataError, match=r"images\[0\]\.neg_category_ids\[0\]: category id 9"):
        read_annotations(ann, tmp_path / "img")


def oi_files(tmp_path: Path, boxes: str | bytes, classes: str = "/m/01,Dog\n/m/02,Person\n",
             name: str = "b.csv") -> tuple[Path, Path]:
    image(tmp_path / "img", "img1.jpg")
    b, c = tmp_path / name, tmp_path / "c.csv"
    b.write_bytes(boxes.encode() if isinstance(boxes, str) else boxes)
    c.write_text(classes, encoding="utf-8")
    return b, c


def test_openimages_csvs_with_a_bom(tmp_path):
    rows = "img1,x,/m/01,1,0.1,0.5,0.2,0.6,0,0,0\n"
    b, c = oi_files(tmp_path, "\ufeff" + OI_HEADER + rows, "\ufeffLabelName,DisplayName\n/m/01,Dog\n/m/02,Person\n")
    anns = read_annotations(b, tmp_path / "img", classes=c)
    assert anns.vocabulary == ["Dog", "Person"]  # no "DisplayName" category
    assert [o.category for o in anns.images[0].objects] == ["Dog"]  # the ImageID column was found


def test_openimages_gzipped_box_csv_is_read(tmp_path):
    rows = "img1,x,/m/01,1,0.1,0.5,0.2,0.6,0,0,0\n"
    b, c = oi_files(tmp_path, gzip.compress(("\ufeff" + OI_HEADER + rows).encode()), name="b.csv.gz")
    anns = read_annotations(b, tmp_path / "img", classes=c)
    assert [o.category for o in anns.images[0].objects] == ["Dog"]


def test_openimages_non_utf8_box_csv_names_file_and_line(tmp_path):
    b, c = oi_files(tmp_path, OI_HEADER.encode() + b"img1,x,/m/01,1,0.1,0.5,0.2,0.6,0,0,0\n"
                    b"img1,caf\xe9,/m/01,1,0.1,0.5,0.2,0.6,0,0,0\n")
    with pytest.raises(DataError, match=r"b\.csv:3: not UTF-8"):
        read_annotations(b, tmp_path / "img", classes=c)


def test_openimages_short_row_names_its_line(tmp_path):
    b, c = oi_files(tmp_path, "LabelName,XMin,XMax,YMin,YMax,ImageID\n/m/01,0.1,0.5,0.2,0.6,img1\n"
                    "/m/01,0.1,0.5,0.2,0.6\n")
    with pytest.raises(DataError, match=r"b\.csv:3: 5 field\(s\) where the header has 6"):
        read_annotations(b, tmp_path / "img", classes=c)


def test_openimages_group_boxes_still_make_their_category_present(tmp_path):
    b, c = oi_files(tmp_path, OI_HEADER + "img1,x,/m/01,1,0.1,0.5,0.2,0.6,0,0,0\n"
                    "img1,x,/m/02,1,0.5,0.9,0.1,0.9,0,0,1\n")
    assert negatives_of(tmp_path, b, classes=c) == {"Dog": []}  # Person is in the image: no negative


def test_iscrowd_must_be_0_or_1(tmp_path):
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}],
            "categories": [{"id": 1, "name": "dog"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9], "iscrowd": "0"}]}
    with pytest.raises(DataError, match=r"annotations\[0\]\.iscrowd: expected 0 or 1, got '0'"):
        list(coco_to_records(data, skip_crowd=True))
    data["annotations"][0]["iscrowd"] = 0
    assert len(list(coco_to_records(data, skip_crowd=True))) == 1


def test_skipped_boxes_are_counted_and_an_empty_output_says_why(tmp_path, monkeypatch, capsys):
    image(tmp_path / "img")
    ann = write_coco(tmp_path / "ann.json", ["dog", "person"], [
        {"category_id": 1, "bbox": [10, 10, 100, 100]}, {"category_id": 2, "bbox": [200, 50, 150, 200], "iscrowd": 1}])
    monkeypatch.setattr(pl, "build_roles_for", lambda o: (scripted_roles(generation_answers()), "scripted", 3, 2))
    code, out, _ = run_cli(["generate", "--annotations", ann, "--images", tmp_path / "img", "--out",
                            tmp_path / "o.jsonl", "--min-box-area", 100000], capsys)
    assert code == 0
    assert "annotations: crowd boxes:skipped 1" in out and "annotations: boxes under the minimum area:skipped 1" in out
    assert "no image kept a box (1 boxes under the minimum area, 1 crowd boxes;" in out
    assert "empty shard" not in out


def test_a_category_is_replaced_as_text():
    assert replace_category("the dog on the left", "dog", r"AC\DC adapter") == r"the AC\DC adapter on the left"
    assert easy_negatives(["the dog on the left"], "dog", [r"c:\data"], 1, key="k") == [r"the c:\data on the left"]
    assert replace_category("the bow (weapon) on the wall", "bow (weapon)", "zebra") == "the zebra on the wall"


@pytest.mark.parametrize(("text", "category", "other"), [
    ("собака у дивана", "кошка", "собака"), ("沙发旁边的狗", "猫", "狗"), ("le chien près du café", "chat", "chien")])
def test_text_filters_work_for_non_latin_words(text, category, other):
    assert mentions(text, other) and not mentions(text, category)
    assert check(text, category, [other], max_words=12) == "wrong object"


@pytest.mark.parametrize(("positive", "category", "other", "negative"), [
    ("沙发左边的猫", "猫", "狗", "沙发左边的狗"), ("白い猫", "猫", "犬", "白い犬"),
    ("ソファの上のねこ", "ねこ", "いぬ", "ソファの上のいぬ"), ("кошка у дивана", "кошка", "собака", "собака у дивана"),
    ("the T shirt on the left", "t-shirt", "zebra", "the zebra on the left"),
    ("die Straße links", "straße", "Brücke", "die Brücke links"),
])
def test_easy_negatives_substitute_the_category_in_any_script(positive, category, other, negative):
    # a word splitter finds the category where the old pattern needed a non-word character around it
    assert easy_negatives([positive], category, [other], 1, key="k") == [negative]


def test_group_phrases_cover_only_objects_the_record_keeps(tmp_path):
    out = tmp_path / "g.jsonl"
    examples = Path(__file__).resolve().parents[2] / "examples"
    run = generate(GenerateOptions(examples / "annotations.json", examples / "images", "offline", out,
                                   settings=GenerateSettings(max_objects=1, hard_negatives=0)),
                   roles=scripted_roles(generation_answers(), vlm=False))
    rocket = json.loads(out.read_text().splitlines()[3])
    assert rocket["filename"] == "rocket.jpg"
    assert [(p["category"], p["relation"]) for p in rocket["pairs"]["llm"]] == [("mast", "single")]
    assert run.counts["groups with an object over --max-objects:skipped"] == 1
    whole = generate(GenerateOptions(examples / "annotations.json", examples / "images", "offline",
                                     tmp_path / "all.jsonl", settings=GenerateSettings(hard_negatives=0)),
                     roles=scripted_roles(generation_answers(), vlm=False))
    assert whole.counts["group:kept"] == 2 and "groups with an object over --max-objects:skipped" not in whole.counts
    # one source (no VLM): each pair's negatives are counted once, a group's too
    pairs = [p for line in (tmp_path / "all.jsonl").read_text().splitlines() for ps in json.loads(line)["pairs"].values()
             for p in ps]
    assert set(json.loads((tmp_path / "all.jsonl").read_text().splitlines()[0])["pairs"]) == {"llm"}
    assert any(p["relation"] == "multi" and p["negative_expressions"] for p in pairs)
    assert whole.counts["negative:kept"] == sum(len(p["negative_expressions"]) for p in pairs)
