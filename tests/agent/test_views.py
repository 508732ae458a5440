"""Image views at the pixel level: exact crops, outlines, clamping, tiny boxes, bad boxes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from reallod.agent.views import VIEWS, extended_box, make_view, outline_width, pixel_box
from reallod.errors import DataError

RED = np.array([255, 0, 0], dtype=np.uint8)


def coded(width: int, height: int) -> tuple[Image.Image, np.ndarray]:
    """An image whose every pixel is unique (x in R, y in G, and neither is ever pure red)."""
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    arr[..., 0] = (np.arange(width)[None, :] % 200)
    arr[..., 1] = (np.arange(height)[:, None] % 200) + 30
    arr[..., 2] = 77
    return Image.fromarray(arr), arr


def test_object_crop_is_exactly_the_box() -> None:
    img, arr = coded(200, 100)
    view, crop = make_view(img, [10, 20, 30, 50], "object_crop")
    assert crop == [10, 20, 30, 50] and view.size == (20, 30)
    assert np.array_equal(np.asarray(view), arr[20:50, 10:30])


def test_fractional_box_covers_every_pixel_it_touches() -> None:
    img, arr = coded(200, 100)
    view, crop = make_view(img, [10.5, 20.2, 29.1, 49.9], "object_crop")
    assert crop == [10, 20, 30, 50]
    assert np.array_equal(np.asarray(view), arr[20:50, 10:30])


@pytest.mark.parametrize(("box", "pixel"), [
    ([5.2, 6.2, 5.4, 6.3], (5, 6)),  # smaller than a pixel
    ([7.0, 8.0, 7.0, 8.0], (7, 8)),  # zero area, on a pixel corner
    ([199.5, 99.5, 200.0, 100.0], (199, 99)),  # sub-pixel in the bottom-right corner
    ([200.0, 40.0, 200.0, 41.0], None),  # zero width on the right edge: outside
])
def test_boxes_smaller_than_a_pixel_still_give_a_pixel(box: list[float], pixel: tuple[int, int] | None) -> None:
    img, arr = coded(200, 100)
    if pixel is None:
        with pytest.raises(DataError, match="outside"):
            make_view(img, box, "object_crop")
        return
    x, y = pixel
    for name in VIEWS:
        view, crop = make_view(img, box, name)
        assert view.width >= 1 and view.height >= 1
    view, crop = make_view(img, box, "object_crop")
    assert crop == [x, y, x + 1, y + 1]
    assert np.array_equal(np.asarray(view)[0, 0], arr[y, x])
    ext, ecrop = make_view(img, box, "extended_crop")
    assert ecrop[0] <= x < ecrop[2] and ecrop[1] <= y < ecrop[3]
    assert np.array_equal(np.asarray(ext)[y - ecrop[1], x - ecrop[0]], RED)  # the box pixel is outlined


def test_extended_crop_is_2w_by_2h_centred_with_a_one_pixel_red_outline() -> None:
    img, arr = coded(200, 100)
    view, crop = make_view(img, [40, 30, 60, 50], "extended_crop")
    assert crop == [30, 20, 70, 60] and view.size == (40, 40)
    out = np.asarray(view)
    assert outline_width(40, 40) == 1
    # The box is at crop coordinates x 10..29, y 10..29: its border pixels are red...
    for x, y in [(10, 10), (29, 10), (10, 29), (29, 29), (20, 10), (10, 20), (29, 20), (20, 29)]:
        assert np.array_equal(out[y, x], RED), (x, y)
    # ...and nothing else changed: outside the box and inside the border.
    untouched = np.ones((40, 40), dtype=bool)
    untouched[10:30, 10:30] = False
    untouched[11:29, 11:29] = True
    assert np.array_equal(out[untouched], arr[20:60, 30:70][untouched])


def test_extended_crop_is_clamped_at_the_image_border() -> None:
    img, arr = coded(200, 100)
    view, crop = make_view(img, [0, 0, 20, 20], "extended_crop")
    assert crop == [0, 0, 30, 30]  # 2w x 2h would be [-10, -10, 30, 30]
    assert np.array_equal(np.asarray(view)[0, 0], RED) and np.array_equal(np.asarray(view)[0, 25], arr[0, 25])
    view, crop = make_view(img, [180, 90, 200, 100], "extended_crop")
    assert crop == [170, 85, 200, 100]
    out = np.asarray(view)
    assert np.array_equal(out[-1, -1], RED)  # the box's bottom-right pixel, at the image corner
    assert np.array_equal(out[0, 0], arr[85, 170])


def test_boxes_partly_outside_the_image_are_clipped() -> None:
    img, arr = coded(200, 100)
    view, crop = make_view(img, [-15, -5, 10, 12], "object_crop")
    assert crop == [0, 0, 10, 12]
    assert np.array_equal(np.asarray(view), arr[0:12, 0:10])
    assert pixel_box([190, 90, 260, 180], 200, 100) == (190, 90, 200, 100)


def test_extended_box_of_an_odd_fractional_box() -> None:
    # w = 7.5, h = 3, centre (14.25, 11.5): window [6.75, 8.5, 21.75, 14.5] → pixels [6, 8, 22, 15]
    assert extended_box([10.5, 10.0, 18.0, 13.0], 200, 100) == (6, 8, 22, 15)


def test_highlight_is_the_whole_image_with_an_outline_about_one_percent_wide() -> None:
    img, arr = coded(300, 200)
    before = np.asarray(img).copy()
    view, crop = make_view(img, [100, 50, 200, 150], "highlight")
    assert crop == [0, 0, 300, 200] and view.size == (300, 200)
    assert outline_width(300, 200) == 2
    out = np.asarray(view)
    for x, y in [(100, 50), (101, 51), (199, 149), (198, 148), (150, 50), (150, 51), (100, 100), (101, 100)]:
        assert np.array_equal(out[y, x], RED), (x, y)
    for x, y in [(99, 49), (150, 52), (102, 100), (200, 150), (150, 100), (10, 10)]:
        assert np.array_equal(out[y, x], arr[y, x]), (x, y)
    changed = np.any(out != arr, axis=-1)
    assert changed.sum() == 2 * 100 * 2 + 2 * 96 * 2  # a 2-px ring inside the 100 x 100 box
    assert np.array_equal(np.asarray(img), before)  # the input is never drawn on


@pytest.mark.parametrize(("size", "width"), [((50, 40), 1), ((10, 3), 1), ((1000, 480), 5), ((640, 1500), 6)])
def test_outline_width(size: tuple[int, int], width: int) -> None:
    assert outline_width(*size) == width


def test_views_of_non_rgb_images_are_rgb() -> None:
    gray = Image.new("L", (40, 30), 128)
    rgba = Image.new("RGBA", (40, 30), (1, 2, 3, 4))
    for img in (gray, rgba):
        for name in VIEWS:
            view, _ = make_view(img, [5, 5, 15, 15], name)
            assert view.mode == "RGB"


@pytest.mark.parametrize(("box", "message"), [
    ([300, 10, 320, 20], "outside"),
    ([-30, -30, -1, -1], "outside"),
    ([10, 10, 5, 20], "x2 < x1"),
    ([float("nan"), 0, 5, 5], "non-finite"),
    ([1, 2, 3], "four numbers"),
    (["a", 2, 3, 4], "four numbers"),
])
def test_unusable_boxes_are_data_errors(box: list, message: str) -> None:
    img, _ = coded(200, 100)
    with pytest.raises(DataError, match=message):
        make_view(img, box, "extended_crop")


def test_unknown_view_is_a_data_error() -> None:
    img, _ = coded(20, 20)
    with pytest.raises(DataError, match="unknown view"):
        make_view(img, [1, 1, 5, 5], "zoom")
