"""The training dataset: indexing with skip counts, ratios, sharding, reproducible items, collate."""

from __future__ import annotations

import gzip
import os

import numpy as np
import orjson
import pytest
import torch
from PIL import Image

from reallod.errors import ConfigError, DataError
from reallod.train.augment import AugmentOptions
from reallod.train.dataset import (
    DataFile,
    EpochBatches,
    TrainDataset,
    collate,
    epoch_plan,
    index_file,
    shard,
    skipped_summary,
)
from reallod.train.sampling import TextOptions
from reallod.train.targets import clean_record

AUG = AugmentOptions(scales=(48, 64), max_size=96, crop_prob=0.5, crop_pre_scales=(64,), crop_size=(32, 64))


def _record(name, w=64, h=48, box=(4, 4, 30, 30), **pair):
    p = {"bboxes": [list(box)], "category": "ball", "relation": "single",
         "positive_expressions": ["a red ball"], "negative_expressions": ["a blue ball", "a cube"]}
    p.update(pair)
    return {"filename": name, "height": h, "width": w, "pairs": {"vlm_short": [p]}}


def _write(path, lines):
    data = b"".join((line if isinstance(line, bytes) else orjson.dumps(line)) + b"\n" for line in lines)
    if str(path).endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)


@pytest.fixture
def files(tmp_path):
    for i in range(6):
        Image.fromarray(np.full((48, 64, 3), 40 * i, dtype=np.uint8)).save(tmp_path / f"im{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    lines = [_record(f"im{i}.png") for i in range(4)]
    lines += [b"{not json", {"filename": "x.png"}, _record("im4.png", box=(10, 10, 10, 20)),
              _record("im5.png", box=(-5, 2, 70, 40)), _record("broken.png")]
    _write(tmp_path / "a.jsonl", lines)
    _write(tmp_path / "b.jsonl.gz", [_record(f"im{i}.png", category="cube") for i in range(3)])
    return tmp_path


def _dataset(idx, tok, **kw):
    return TrainDataset(idx, lambda s: tok(s, add_special_tokens=False)["input_ids"],
                        TextOptions(max_text_len=64, max_negatives=4), AUG, seed=kw.pop("seed", 0), **kw)


def test_index_skips_unusable_lines_with_reasons(files):
    a = index_file(DataFile(str(files / "a.jsonl"), str(files)))
    b = index_file(DataFile(str(files / "b.jsonl.gz"), str(files)))
    assert len(a) == 6 and a.line_numbers.tolist() == [1, 2, 3, 4, 8, 9]
    assert dict(a.skipped) == {"bad_json": 1, "missing_field": 1, "no_usable_box": 1}
    assert len(b) == 3 and b.blob is not None and b.categories == {"cube"}
    assert "6 records, skipped 1 bad_json, 1 missing_field, 1 no_usable_box" in skipped_summary([a, b])
    assert [orjson.loads(b.read(i))["filename"] for i in range(3)] == ["im0.png", "im1.png", "im2.png"]


def test_the_summary_names_the_lines_left_out_and_the_pairs_dropped(files):
    """It counted lines by reason ("skipped 1 bad_json") and said nothing of an inverted box in a record
    that kept another pair: neither could be found in a file of millions of lines."""
    two = _record("im0.png")
    two["pairs"]["llm"] = [{**two["pairs"]["vlm_short"][0], "bboxes": [[50, 40, 10, 10]]}]  # inverted
    _write(files / "c.jsonl", [_record("im1.png"), b"{oops", two, {"filename": "x.png"}, b"[1",
                               b"{also bad", b"{and this", two])
    c = index_file(DataFile(str(files / "c.jsonl"), str(files)))
    assert len(c) == 3 and c.pairs_dropped == 2
    said = skipped_summary([c])
    assert (f"{files / 'c.jsonl'}: 3 records, skipped 4 bad_json, 1 missing_field (lines 2, 4, 5, ...), 2 pair(s) "
            "without a usable box (degenerate, inverted or outside the image) dropped (lines 3, 8); "
            f"`reallod data validate {files / 'c.jsonl'}` says why") == said


@pytest.mark.parametrize("name", ["bom.jsonl", "bom.jsonl.gz"])
def test_a_byte_order_mark_does_not_cost_the_first_record(files, name):
    """It was counted as bad JSON and the first record left out, without a word beyond the count."""
    _write(files / name, [b"\xef\xbb\xbf" + orjson.dumps(_record("im0.png")), _record("im1.png")])
    index = index_file(DataFile(str(files / name), str(files)))
    assert len(index) == 2 and not index.skipped
    assert orjson.loads(index.read(0))["filename"] == "im0.png"


def test_clean_record_clamps_boxes_and_drops_bad_pairs():
    rec, why = clean_record(_record("a.png", box=(-5, 2, 70, 40), negative_expressions=["A red ball", " ", "x"]))
    assert why is None
    pair = rec.pairs["vlm_short"][0]
    assert pair.bboxes == [[0.0, 2.0, 64.0, 40.0]] and pair.negative_expressions == ["x"]
    assert clean_record({"filename": "a", "height": 0, "width": 3, "pairs": {}}) == (None, "bad_size")
    assert clean_record(_record("a.png", box=(5, 5, 5, 9)))[1] == "no_usable_box"
    for outside in ("../a.png", "/etc/a.png", "x/../../a.png"):  # training never reads outside --images
        assert clean_record(_record(outside)) == (None, "image_outside_root")


def test_training_compares_expressions_as_every_command_does():
    """A negative that is a positive but for spacing or Unicode form was trained as both (training compared
    by strip().lower(), validate and the converters by text_key); an expression of only a zero-width
    space was a phrase without a token."""
    rec, _ = clean_record(_record("a.png", positive_expressions=["a red ball", "café", "\u200b"],
                                  negative_expressions=["A red  ball", "cafe\u0301", "\u200b\x00", "a cube"]))
    pair = rec.pairs["vlm_short"][0]
    assert pair.positive_expressions == ["a red ball", "café"] and pair.negative_expressions == ["a cube"]


def test_missing_paths_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        index_file(DataFile(str(tmp_path / "nope.jsonl"), str(tmp_path)))
    os.mkfifo(tmp_path / "pipe.jsonl")  # said 'not found' of a pipe that is there
    with pytest.raises(DataError, match=r"pipe\.jsonl: not a regular file \(a folder, a pipe or a device\)"):
        index_file(DataFile(str(tmp_path / "pipe.jsonl"), str(tmp_path)))
    _write(tmp_path / "a.jsonl", [_record("a.png")])
    with pytest.raises(DataError, match="image root"):
        index_file(DataFile(str(tmp_path / "a.jsonl"), str(tmp_path / "nope")))
    _write(tmp_path / "bad.jsonl", [b"{", b"[]"])
    with pytest.raises(DataError, match="no usable training records"):
        TrainDataset([index_file(DataFile(str(tmp_path / "bad.jsonl"), str(tmp_path)))], len, TextOptions(), AUG)


def test_epoch_plan_applies_ratios_and_reshuffles():
    p0 = epoch_plan([4, 10], [2.0, 0.5], seed=0, epoch=0)
    assert len(p0) == 8 + 5
    counts = np.bincount(p0, minlength=14)
    assert (counts[:4] == 2).all() and counts[4:].sum() == 5 and counts[4:].max() == 1
    p1 = epoch_plan([4, 10], [2.0, 0.5], seed=0, epoch=1)
    assert not np.array_equal(p0, p1)
    assert np.array_equal(p0, epoch_plan([4, 10], [2.0, 0.5], seed=0, epoch=0))


def test_shards_are_equal_and_cover_the_plan():
    plan = np.arange(11)
    parts = [shard(plan, 3, r) for r in range(3)]
    assert [len(p) for p in parts] == [4, 4, 4]
    assert set(np.concatenate(parts)) == set(plan)


def test_items_are_reproducible_per_key_and_differ_between_epochs(files, bert_tokenizer):
    ds = _dataset([index_file(DataFile(str(files / "a.jsonl"), str(files)))], bert_tokenizer)
    a, b = ds[(0, 2, 1)], ds[(0, 2, 1)]
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and a["input_ids"] == b["input_ids"]
    assert torch.equal(a["labels"]["boxes"], b["labels"]["boxes"])
    others = [ds[(e, 2, 1)] for e in range(1, 8)]
    assert any(o["pixel_values"].shape != a["pixel_values"].shape or o["input_ids"] != a["input_ids"]
               for o in others)
    for item in [a, *others]:
        boxes = item["labels"]["boxes"]
        assert ((boxes >= 0) & (boxes <= 1)).all() and len(boxes) == len(item["labels"]["class_labels"])


def test_unreadable_images_are_replaced_and_reported(files, bert_tokenizer):
    ds = _dataset([index_file(DataFile(str(files / "a.jsonl"), str(files)))], bert_tokenizer)
    broken = 5  # the record of broken.png
    assert ds.record(broken)[1].endswith("broken.png")
    item = ds[(0, 0, broken)]
    assert len(item["failed_images"]) == 1 and "broken.png" in item["failed_images"][0]
    assert item["key"][2] != broken


def test_batches_shard_and_start_mid_epoch(files, bert_tokenizer):
    idx = [index_file(DataFile(str(files / "a.jsonl"), str(files))),
           index_file(DataFile(str(files / "b.jsonl.gz"), str(files), ratio=2.0))]
    ds = _dataset(idx, bert_tokenizer)
    assert len(ds) == 9 and len(ds.epoch_plan(0)) == 12
    ranks = [EpochBatches(ds, batch_size=4, num_replicas=2, rank=r) for r in range(2)]
    for s in ranks:
        s.set_epoch(3)
    batches = [list(s) for s in ranks]
    assert [len(b) for b in batches] == [2, 2] and ranks[0].batches_per_epoch() == 2
    positions = sorted(k[1] for b in batches for batch in b for k in batch)
    assert positions == list(range(12))
    ranks[0].set_epoch(3, start_batch=1)
    assert list(ranks[0]) == batches[0][1:] and len(ranks[0]) == 1
    with pytest.raises(ConfigError):
        EpochBatches(ds, batch_size=0)


def test_collate_pads_images_and_prompts(files, bert_tokenizer):
    ds = _dataset([index_file(DataFile(str(files / "a.jsonl"), str(files)))], bert_tokenizer)
    items = [ds[(0, i, i)] for i in range(4)]
    batch = collate(items)
    n, _, h, _ = batch["pixel_values"].shape
    assert n == 4 and h == max(i["pixel_values"].shape[1] for i in items)
    for i, item in enumerate(items):
        _, ih, iw = item["pixel_values"].shape
        assert batch["pixel_mask"][i].sum() == ih * iw
        assert torch.equal(batch["pixel_values"][i, :, :ih, :iw], item["pixel_values"])
        ids = batch["input_ids"][i]
        assert ids[: len(item["input_ids"])].tolist() == item["input_ids"]
        assert batch["attention_mask"][i].sum() == len(item["input_ids"]) and (ids[len(item["input_ids"]):] == 0).all()
