"""Annotation readers: COCO-format json and OpenImages CSVs; bad files name the entry."""

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from reallod.engine.annotations import ReadOptions, read_annotations
from reallod.errors import ConfigError, DataError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def coco(tmp_path: Path, **change) -> Path:
    data = json.loads((EXAMPLES / "annotations.json").read_text())
    for key, fn in change.items():
        fn(data[key])
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(data))
    return p


def test_reads_the_bundled_example():
    anns = read_annotations(EXAMPLES / "annotations.json", EXAMPLES / "images")
    assert [i.filename for i in anns.images] == ["astronaut.jpg", "coffee.jpg", "chelsea.jpg", "rocket.jpg"]
    assert sum(len(i.objects) for i in anns.images) == 12
    assert "cat" in anns.vocabulary and anns.images[0].objects[0].box == [30.0, 15.0, 370.0, 512.0]


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"annotations": lambda a: a[3].update(image_id=99)}, "annotations[3].image_id", "not in images"),
    ({"annotations": lambda a: a[2].update(category_id=77)}, "annotations[2].category_id", "not in categories"),
    ({"annotations": lambda a: a[1].update(bbox=[400, 10, 300, 20])}, "annotations[1].bbox", "outside its image"),
    ({"annotations": lambda a: a[0].update(bbox=[1, 2, "x", 4])}, "annotations[0].bbox", "finite numbers"),
    ({"images": lambda i: i[2].update(file_name="nope.jpg")}, "images[2].file_name", "not found"),
    ({"images": lambda i: i[1].update(width=2000)}, "images[1].file_name", "but the annotation says"),
])
def test_bad_coco_entries_name_the_entry(tmp_path, change, field, words):
    with pytest.raises(DataError) as e:
        read_annotations(coco(tmp_path, **change), EXAMPLES / "images")
    assert e.value.field == field and words in str(e.value)
    assert "ann.json" in str(e.value)


def test_crowd_and_tiny_boxes_are_filtered_by_option(tmp_path):
    def mark(a):
        a[0]["iscrowd"] = 1
    p = coco(tmp_path, annotations=mark)
    assert sum(len(i.objects) for i in read_annotations(p, EXAMPLES / "images").images) == 11
    assert sum(len(i.objects) for i in read_annotations(
        p, EXAMPLES / "images", options=ReadOptions(skip_crowd=False)).images) == 12
    small = read_annotations(p, EXAMPLES / "images", options=ReadOptions(skip_crowd=False, min_area=20000))
    assert 0 < sum(len(i.objects) for i in small.images) < 12


def test_clamp_boxes_clamps_boxes_past_the_border_and_counts_them(tmp_path):
    """Objects365-style boxes a few pixels past the border: refused by default (naming each, with the
    option), clamped and counted per image with --clamp-boxes; one with nothing inside is dropped."""
    def past(anns: list) -> None:
        anns[0]["bbox"] = [-20, -5, 400, 600]  # astronaut.jpg, 512x512: past the left, top and bottom
        anns[1]["bbox"] = [600, 10, 50, 20]  # wholly outside
        anns[2]["iscrowd"], anns[2]["bbox"] = 1, [-50, 0, 10, 10]  # a crowd box, skipped: not counted

    p = coco(tmp_path, annotations=past)
    with pytest.raises(DataError, match=r"2 boxes lie outside .* --clamp-boxes clamps them to the image"):
        read_annotations(p, EXAMPLES / "images")
    anns = read_annotations(p, EXAMPLES / "images", options=ReadOptions(clamp_boxes=True))
    first = anns.images[0]
    assert first.filename == "astronaut.jpg" and first.clamped == 1 and sum(i.clamped for i in anns.images) == 1
    assert first.objects[0].box == [0.0, 0.0, 380.0, 512.0]
    assert anns.skipped["boxes outside the image"] == 1 and sum(len(i.objects) for i in anns.images) == 10


def test_clamp_boxes_for_openimages_fractions(tmp_path):
    boxes, classes, root = openimages(tmp_path, ["abc123,xclick,/m/01yrx,1,-0.1,0.5,0.2,1.2,0,0,0,0,0"])
    with pytest.raises(DataError, match="--clamp-boxes") as e:
        read_annotations(boxes, root, classes=classes)
    assert e.value.line == 2
    img = read_annotations(boxes, root, classes=classes, options=ReadOptions(clamp_boxes=True)).images[0]
    assert img.clamped == 1 and img.objects[0].box[0] == 0.0 and img.objects[0].box[3] == img.height


def openimages(tmp_path: Path, rows: list[str]) -> tuple[Path, Path, Path]:
    root = tmp_path / "img"
    root.mkdir()
    shutil.copy(EXAMPLES / "images" / "chelsea.jpg", root / "abc123.jpg")
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,"
                     "IsDepiction,IsInside\n" + "\n".join(rows) + "\n")
    classes = tmp_path / "classes.csv"
    classes.write_text("/m/01yrx,Cat\n/m/0k0pj,Human nose\n")
    return boxes, classes, root


def test_openimages_boxes_become_pixel_xyxy(tmp_path):
    boxes, classes, root = openimages(tmp_path, ["abc123,xclick,/m/01yrx,1,0.1,0.5,0.2,1.0,0,0,0,0,0",
                                                 "abc123,xclick,/m/0k0pj,1,0,0.2,0,0.2,0,0,1,0,0"])
    anns = read_annotations(boxes, root, classes=classes)
    w, h = Image.open(root / "abc123.jpg").size
    img = anns.images[0]
    assert (img.filename, img.width, img.height) == ("abc123.jpg", w, h)
    assert [o.category for o in img.objects] == ["Cat"]  # the group box is filtered
    assert img.objects[0].box == pytest.approx([0.1 * w, 0.2 * h, 0.5 * w, 1.0 * h])
    assert anns.skipped == {"crowd boxes": 1} and sorted(anns.vocabulary) == ["Cat", "Human nose"]


@pytest.mark.parametrize(("row", "words"), [
    ("abc123,xclick,/m/zzz,1,0.1,0.5,0.2,1.0,0,0,0,0,0", "not in the class descriptions"),
    ("abc123,xclick,/m/01yrx,1,0.1,1.5,0.2,1.0,0,0,0,0,0", "outside the image"),
    ("missing,xclick,/m/01yrx,1,0.1,0.5,0.2,1.0,0,0,0,0,0", "not found"),
])
def test_bad_openimages_rows_name_the_line(tmp_path, row, words):
    boxes, classes, root = openimages(tmp_path, ["abc123,xclick,/m/01yrx,1,0.1,0.5,0.2,1.0,0,0,0,0,0", row])
    with pytest.raises(DataError) as e:
        read_annotations(boxes, root, classes=classes)
    assert e.value.line == 3 and words in str(e.value)


def test_openimages_needs_its_class_file(tmp_path):
    boxes, _, root = openimages(tmp_path, [])
    with pytest.raises(DataError, match="class-description"):
        read_annotations(boxes, root)


def test_rotated_photos_are_read_at_their_upright_size(tmp_path):
    """A photo stored 100 × 40 with EXIF orientation 6 is a 40 × 100 picture, as every part of reallod
    (and OpenCV, hence MMDetection) loads it: a COCO entry must say so, and OpenImages fractions are
    fractions of that picture."""
    boxes, classes, root = openimages(tmp_path, ["abc123,xclick,/m/01yrx,1,0.1,0.5,0.2,1.0,0,0,0,0,0"])
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (100, 40)).save(root / "abc123.jpg", exif=exif)  # in place of the example photo
    img = read_annotations(boxes, root, classes=classes).images[0]
    assert (img.width, img.height) == (40, 100)
    assert img.objects[0].box == pytest.approx([4.0, 20.0, 20.0, 100.0])

    data = {"images": [{"id": 1, "file_name": "abc123.jpg", "width": 40, "height": 100}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 30, 90], "iscrowd": 0}],
            "categories": [{"id": 1, "name": "cat"}]}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    assert read_annotations(tmp_path / "ann.json", root).images[0].height == 100
    data["images"][0].update(width=100, height=40)  # the size the file stores
    data["annotations"][0]["bbox"] = [2, 3, 30, 30]
    (tmp_path / "ann.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="is 40x100 but the annotation says 100x40"):
        read_annotations(tmp_path / "ann.json", root)


def test_skipped_boxes_are_counted_per_image_for_a_shard(tmp_path):
    def skip_some(a):
        a[0]["iscrowd"] = 1  # astronaut.jpg: a crowd
        a[4]["bbox"] = [172, 15, 2, 2]  # coffee.jpg: a tiny cup
        a[7]["bbox"], a[8]["bbox"] = [0, 0, 0, 300], [235, 218, 1, 1]  # chelsea.jpg: keeps no box
        a[9]["bbox"] = [640.5, 125, 0.4, 285]  # rocket.jpg (640 wide): outside once clamped
    p = coco(tmp_path, annotations=skip_some)
    anns = read_annotations(p, EXAMPLES / "images", options=ReadOptions(min_area=10))
    assert anns.skipped == {"crowd boxes": 1, "boxes under the minimum area": 2, "boxes with no area": 1,
                            "boxes outside the image": 1, "images with no box": 1}
    assert anns.skipped_in(lambda name: True) == anns.skipped  # the per-image counts add up to the file's
    assert anns.skipped_in(lambda name: name in {"astronaut.jpg", "rocket.jpg"}) == {
        "crowd boxes": 1, "boxes outside the image": 1}
    assert anns.skipped_in(lambda name: name == "chelsea.jpg") == {
        "boxes with no area": 1, "boxes under the minimum area": 1, "images with no box": 1}
    assert anns.skipped_in(lambda name: False) == {}


def test_openimages_skipped_boxes_are_counted_per_image(tmp_path):
    boxes, classes, root = openimages(tmp_path, ["abc123,xclick,/m/01yrx,1,0.1,0.5,0.2,1.0,0,0,0,0,0",
                                                 "abc123,xclick,/m/0k0pj,1,0,0.2,0,0.2,0,0,1,0,0",
                                                 "def456,xclick,/m/0k0pj,1,0,0.2,0,0.2,0,0,1,0,0"])
    shutil.copy(root / "abc123.jpg", root / "def456.jpg")
    anns = read_annotations(boxes, root, classes=classes)
    assert anns.skipped == {"crowd boxes": 2, "images with no box": 1}
    assert anns.skipped_in(lambda name: name == "abc123.jpg") == {"crowd boxes": 1}
    assert anns.skipped_in(lambda name: name == "def456.jpg") == {"crowd boxes": 1, "images with no box": 1}


@pytest.mark.timeout(60)  # the former reader waited forever on a pipe it had emptied
@pytest.mark.parametrize("gz", [False, True])
def test_openimages_csvs_read_from_pipes_keep_their_first_lines(tmp_path, gz):
    """`<(zcat boxes.csv.gz)`: the gzip probe opened the pipe apart and took its first bytes (the header
    row), so the reader met a file without its columns."""
    import gzip
    import os
    import threading

    boxes, classes, root = openimages(tmp_path, ["abc123,xclick,/m/01yrx,1,0.1,0.5,0.2,1.0,0,0,0,0,0"])
    pipes = {}
    for path in (boxes, classes):
        content = gzip.compress(path.read_bytes()) if gz else path.read_bytes()
        fifo = tmp_path / "pipes" / path.name
        fifo.parent.mkdir(exist_ok=True)
        os.mkfifo(fifo)
        pipes[path] = fifo

        def feed(fifo=fifo, content=content):
            with open(fifo, "wb") as f:
                f.write(content)

        threading.Thread(target=feed, daemon=True).start()
    anns = read_annotations(pipes[boxes], root, classes=pipes[classes])
    assert [o.category for o in anns.images[0].objects] == ["Cat"]


def test_every_box_outside_its_image_is_named_in_one_error(tmp_path):
    """A file is fixed in one go: the first boxes are named, the rest counted (before, one a run)."""
    def outside(anns: list) -> None:
        for a in anns:
            a["bbox"] = [500, 10, 300, 20]

    with pytest.raises(DataError) as e:
        read_annotations(coco(tmp_path, annotations=outside), EXAMPLES / "images")
    assert str(e.value).startswith(f"{tmp_path / 'ann.json'}: 12 boxes lie outside their image by more than 1 px: "
                                   "annotations[0].bbox: box [x, y, w, h] = [500, 10, 300, 20] lies outside")
    assert "annotations[4].bbox" in str(e.value) and "annotations[5]" not in str(e.value)
    assert str(e.value).endswith(" and 7 more; --clamp-boxes clamps them to the image (or fix the annotations)")


def test_every_missing_image_is_named_in_one_error(tmp_path):
    def missing(images: list) -> None:
        for i in images[1:]:
            i["file_name"] = f"gone/{i['file_name']}"

    with pytest.raises(DataError, match=r"3 images cannot be used: images\[1\]\.file_name: image 'gone/coffee\.jpg' "
                                        r"not found .*; images\[3\]\.file_name: image 'gone/rocket\.jpg' not found"):
        read_annotations(coco(tmp_path, images=missing), EXAMPLES / "images")


def test_classes_given_with_a_coco_json_is_refused_not_ignored(tmp_path):
    classes = tmp_path / "classes.csv"
    classes.write_text("/m/01,Cat\n")
    with pytest.raises(ConfigError, match=r"--classes .*classes\.csv is for an OpenImages box CSV .*ann\.json is "
                                          r"read as a COCO-format json"):
        read_annotations(coco(tmp_path), EXAMPLES / "images", classes=classes)
