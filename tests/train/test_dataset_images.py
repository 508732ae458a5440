"""Training images checked at setup (a wrong image root is refused, naming the file), a record whose size is
not its image's skipped and counted, and a replacement record drawn from the same file."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from PIL import Image

from reallod.errors import DataError
from reallod.train import checkpoint as C
from reallod.train.augment import AugmentOptions
from reallod.train.dataset import DataFile, TrainDataset, check_image_root, index_file
from reallod.train.sampling import TextOptions

from .helpers import quiet, tiny_config

AUG = AugmentOptions(flip_prob=0, crop_prob=0, scales=(60,), max_size=1000)


def _record(name, w, h, box=(10, 10, 50, 50)):
    pair = {"bboxes": [list(box)], "category": "box", "relation": "single", "positive_expressions": ["the box"],
            "negative_expressions": []}
    return {"filename": name, "width": w, "height": h, "pairs": {"vlm_short": [pair]}}


def _file(path, records):
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return index_file(DataFile(str(path), str(path.parent)))


def _dataset(files):
    return TrainDataset(files, lambda t: [2000 + len(w) for w in t.split()], TextOptions(source_probs={"vlm_short": 1}),
                        AUG)


@pytest.fixture
def images(tmp_path):
    for i in range(4):
        Image.new("RGB", (120, 60), (40 * i, 0, 0)).save(tmp_path / f"wide{i}.png")  # 120 wide, 60 high
    (tmp_path / "elsewhere").mkdir()
    return tmp_path


def test_a_wrong_image_root_is_refused_at_setup(images):
    """It passed setup: training replaced every one of its images by another file's record, the file
    contributing nothing, or stopped mid-run after 20 misses in a row."""
    good = _file(images / "good.jsonl", [_record(f"wide{i}.png", 120, 60) for i in range(4)])
    wrong = index_file(DataFile(str(images / "good.jsonl"), str(images / "elsewhere")))
    check_image_root(good)
    with pytest.raises(DataError) as e:
        check_image_root(wrong)
    message = str(e.value)
    assert message.startswith(f"{images / 'good.jsonl'}: of 4 images checked")
    assert f"image root {images / 'elsewhere'}" in message and "4 missing" in message
    assert str(images / "elsewhere" / "wide0.png") in message and "data.train[].images" in message
    # one image missing in four is training's to replace and count, not a wrong root
    some = _file(images / "some.jsonl", [_record(f"wide{i}.png", 120, 60) for i in range(3)]
                 + [_record("gone.png", 120, 60)])
    check_image_root(some)
    assert len(_dataset([some])) == 4


def test_a_record_whose_size_is_not_its_images_is_skipped_and_counted(images):
    """Its boxes were stretched by the ratio of the two sizes (sides swapped: an EXIF rotation the record did
    not see), where a resized copy keeps its aspect ratio; the held-out evaluation refuses such a record."""
    records = [_record("wide0.png", 60, 120)] + [_record(f"wide{i}.png", 120, 60) for i in (1, 2, 3)]
    ds = _dataset([_file(images / "one.jsonl", records)])
    item = ds[(0, 0, 0)]
    assert item["key"][2] != 0 and len(item["failed_images"]) == 1
    assert "wide0.png: image is 120×60, its record says 60×120" in item["failed_images"][0]
    h, w = item["pixel_values"].shape[1:]
    cx, cy, bw, bh = item["labels"]["boxes"][0].tolist()
    assert np.allclose([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h],
                       [10, 10, 50, 50])  # the replacement's box, where its record says (the image is not resized)
    # a copy resized keeping the aspect ratio (to within rounding) is read, its boxes scaled to it
    copy = _dataset([_file(images / "copy.jsonl", [_record(f"wide{i}.png", 241, 121) for i in range(4)])])
    item = copy[(0, 0, 0)]
    assert item["key"][2] == 0 and not item["failed_images"]
    assert np.allclose(item["labels"]["boxes"][0].tolist(), [15 / 120, 15 / 60, 20 / 120, 20 / 60], atol=0.01)
    # most records of a file with other sizes: refused at setup, as the evaluation refuses one
    swapped = _file(images / "swapped.jsonl", [_record(f"wide{i}.png", 60, 120) for i in range(4)])
    with pytest.raises(DataError, match=r"swapped\.jsonl: of 4 images checked .*4 of another size than their record "
                                        r"\(not resized copies\) \(e\.g\. .*wide0\.png is 120×60, its record says 60×120\)"):
        check_image_root(swapped)


def test_a_replacement_record_comes_from_the_same_file(images):
    """It was drawn over all files, whatever their ratios: a file's failures went to the others' share."""
    a = _file(images / "a.jsonl", [_record("gone.png", 120, 60)] + [_record(f"wide{i}.png", 120, 60) for i in (0, 1)])
    b = _file(images / "b.jsonl", [_record(f"wide{i}.png", 120, 60) for i in range(4)] * 5)
    ds = _dataset([a, b])
    keys = [ds[(epoch, 0, 0)]["key"][2] for epoch in range(10)]
    assert set(keys) <= {1, 2}


def test_training_refuses_a_wrong_image_root_before_the_model_is_built(tmp_path, shapes, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    train_file = str(shapes / "train.jsonl")
    cfg = tiny_config(shapes, [f"data.train=[{{file: {train_file}, images: {shapes}}}, "
                               f"{{file: {train_file}, images: {empty}}}]", "schedule.max_steps=2"])
    from reallod.train import loop

    def build_detector(*args, **kwargs):
        raise AssertionError("the model was built before the image roots were checked")

    monkeypatch.setattr(loop, "build_detector", build_detector)
    with pytest.raises(DataError, match=rf"{train_file}: of 12 images checked .*image root {empty}\).*12 missing"):
        loop.train(cfg, tmp_path / "run", echo=quiet)
    assert C.latest_checkpoint(tmp_path / "run") is None
