"""Augmentations: the flip swaps left/right words and mirrors boxes; crop clips and drops; seeded."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from reallod.train import augment as A


@pytest.mark.parametrize(("text", "want"), [
    ("the cup on the left", "the cup on the right"),
    ("Left shoe next to the RIGHT one", "Right shoe next to the LEFT one"),
    ("the leftmost chair, right-hand side", "the rightmost chair, left-hand side"),
    ("moving leftwards", "moving rightwards"),
    ("a bright copyright sign, upright", "a bright copyright sign, upright"),
    ("righteous leftover", "righteous leftover"),
])
def test_swap_left_right(text, want):
    assert A.swap_left_right(text) == want
    assert A.swap_left_right(A.swap_left_right(text)) == text


def test_hflip_mirrors_boxes_and_pixels():
    image = Image.new("RGB", (100, 50))
    image.paste((255, 0, 0), (10, 5, 30, 25))
    flipped, boxes = A.hflip(image, np.array([[10.0, 5, 30, 25]]))
    np.testing.assert_allclose(boxes, [[70, 5, 90, 25]])
    assert flipped.getpixel((80, 15)) == (255, 0, 0) and flipped.getpixel((20, 15)) == (0, 0, 0)


def test_resize_keeps_ratio_and_long_side_limit():
    image = Image.new("RGB", (400, 100))
    out, boxes = A.resize(image, np.array([[0.0, 0, 400, 100]]), short=200, max_long=600)
    assert out.size == (600, 150)  # the long side limit wins over the short side target
    np.testing.assert_allclose(boxes, [[0, 0, 600, 150]])


def test_crop_clips_and_drops_vanished_boxes():
    boxes = np.array([[0.0, 0, 50, 50], [90, 90, 100, 100], [40, 40, 60, 60]])
    out, keep = A.crop_boxes(boxes, (20, 20, 80, 80), min_size=1)
    assert keep.tolist() == [0, 2]
    np.testing.assert_allclose(out, [[0, 0, 30, 30], [20, 20, 40, 40]])


def test_random_crop_never_drops_every_box():
    image = Image.new("RGB", (200, 200))
    boxes = np.array([[0.0, 0, 10, 10]])
    for seed in range(30):
        _, out, keep = A.random_crop(image, boxes, np.random.default_rng(seed), (50, 60), tries=3)
        assert len(keep) == 1 and (out[:, 2:] > out[:, :2]).all()


def test_augment_is_reproducible_per_seed():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8))
    boxes = np.array([[10.0, 10, 60, 50], [100, 60, 150, 110]])
    opts = A.AugmentOptions(scales=(96, 112, 128), max_size=200, crop_prob=0.5, crop_pre_scales=(120,),
                            crop_size=(60, 100))
    runs = [A.augment(image, boxes, np.random.default_rng([3, 1, 7]), opts) for _ in range(2)]
    assert runs[0].image.tobytes() == runs[1].image.tobytes()
    np.testing.assert_array_equal(runs[0].boxes, runs[1].boxes)
    outcomes = {(A.augment(image, boxes, np.random.default_rng([3, e]), opts).image.size) for e in range(12)}
    assert len(outcomes) > 1  # different epochs draw different scales/crops
