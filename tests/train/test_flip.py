"""The flip test of issue 7: "left" becomes "right" in the prompt and the box moves accordingly."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from reallod.data.io import write_records
from reallod.train.augment import AugmentOptions
from reallod.train.dataset import DataFile, TrainDataset, index_file
from reallod.train.sampling import TextOptions


@pytest.fixture
def left_cup(tmp_path, bert_tokenizer):
    image = Image.new("RGB", (200, 100), (255, 255, 255))
    image.paste((200, 30, 30), (10, 30, 50, 70))  # the red cup, on the left
    image.save(tmp_path / "cups.png")
    write_records(tmp_path / "d.jsonl", [{
        "filename": "cups.png", "height": 100, "width": 200,
        "pairs": {"llm": [{"bboxes": [[10, 30, 50, 70]], "category": "cup", "relation": "single",
                           "positive_expressions": ["the cup on the left"],
                           "negative_expressions": ["the cup on the right"]}]}}])
    return index_file(DataFile(str(tmp_path / "d.jsonl"), str(tmp_path)))


def _sample(fidx, tokenizer, flip_prob, swap=True):
    aug = AugmentOptions(flip_prob=flip_prob, swap_left_right=swap, scales=(100,), max_size=400, crop_prob=0)
    text = TextOptions(source_probs={"llm": 1.0}, max_text_len=64)
    ds = TrainDataset([fidx], lambda s: tokenizer(s, add_special_tokens=False)["input_ids"], text, aug, seed=0)
    return ds[(0, 0, 0)]


def _positive_phrase(sample):
    return sample["phrases"][int(sample["labels"]["class_labels"][0])]


def test_flip_swaps_left_and_right_and_moves_the_box(left_cup, bert_tokenizer):
    plain = _sample(left_cup, bert_tokenizer, flip_prob=0.0)
    flipped = _sample(left_cup, bert_tokenizer, flip_prob=1.0)
    assert _positive_phrase(plain) == "the cup on the left"
    assert _positive_phrase(flipped) == "the cup on the right"
    # The negative is swapped too, so it stays a negative that names the other side.
    assert set(flipped["phrases"]) == {"the cup on the right", "the cup on the left"}
    cx_plain = float(plain["labels"]["boxes"][0, 0])
    cx_flipped = float(flipped["labels"]["boxes"][0, 0])
    assert cx_plain == pytest.approx(0.15, abs=0.01)
    assert cx_flipped == pytest.approx(0.85, abs=0.01)
    # The pixels moved with the box: the red patch is now on the right of the image tensor.
    green = flipped["pixel_values"][1]  # the red patch is dark in the green channel, the background is white
    left_half, right_half = green[:, : green.shape[1] // 2], green[:, green.shape[1] // 2:]
    assert float(right_half.min()) < -1.0 < float(left_half.min())
    assert np.isclose(float(plain["labels"]["boxes"][0, 2]), float(flipped["labels"]["boxes"][0, 2]))


def test_flip_without_swapping_keeps_the_words(left_cup, bert_tokenizer):
    flipped = _sample(left_cup, bert_tokenizer, flip_prob=1.0, swap=False)
    assert _positive_phrase(flipped) == "the cup on the left"  # the published behaviour, now wrong
