"""Opening one image: upright, RGB, within a pixel budget, from several threads at once."""

from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pytest
from PIL import Image

from reallod.data.images import open_header, open_image, upright_size
from reallod.errors import DataError

from .image_files import noise_jpeg


def test_threads_opening_images_leave_pillows_guard_and_the_warning_filters_as_they_were(tmp_path, monkeypatch):
    """The prefetch threads of detect and eval open images at once. Each once set Pillow's process-wide
    limit aside and put back what it had found, which could be another thread's "off": the guard then
    stayed off for the whole process, and a warning filter was left behind. Opening is slowed down here
    so that the threads overlap every time, as they do by chance on large images."""
    path = tmp_path / "a.jpg"
    noise_jpeg(path, 64, 48)
    pillow_open = Image.open

    def slow_open(*args, **kwargs):
        time.sleep(0.005)
        return pillow_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", slow_open)
    limit, filters = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    errors: list[BaseException] = []

    def work(delay: float) -> None:
        time.sleep(delay)
        try:
            for _ in range(10):
                assert open_image(path).size == (64, 48)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(0.002 * i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert limit == Image.MAX_IMAGE_PIXELS
    assert warnings.filters == filters


def test_the_budget_decides_above_and_below_pillows_own_limit(tmp_path, monkeypatch):
    path = tmp_path / "b.jpg"
    noise_jpeg(path, 64, 64)  # 4,096 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # Pillow alone would refuse it (> 2 × 1,000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no DecompressionBombWarning on the way
        assert open_image(path, max_pixels=5_000).size == (64, 64)
    assert Image.MAX_IMAGE_PIXELS == 1_000
    with pytest.raises(DataError, match=r"64×64 = 4,096 pixels, above the limit of 4,000") as exc:
        open_image(path, max_pixels=4_000)
    assert exc.value.path == str(path)


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "phone.jpg"
    pixels = np.zeros((40, 100, 3), np.uint8)
    pixels[:, :10] = 255  # a white band on the left of what the sensor stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    image = open_image(path)
    assert image.size == (40, 100) and image.mode == "RGB"
    top = np.asarray(image)[:10].mean()
    assert top > 200, "the band that was on the left is at the top once upright"


def test_missing_and_unreadable_files_are_named(tmp_path):
    with pytest.raises(DataError, match="image not found") as exc:
        open_image(tmp_path / "gone.jpg")
    assert exc.value.path == str(tmp_path / "gone.jpg")
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(DataError, match="not an image Pillow can read"):
        open_image(tmp_path / "notes.jpg")
    whole = tmp_path / "whole.jpg"
    noise_jpeg(whole, 200, 200)
    (tmp_path / "cut.jpg").write_bytes(whole.read_bytes()[:2000])
    with pytest.raises(DataError, match="cannot decode the image"):
        open_image(tmp_path / "cut.jpg")


def test_a_png_is_turned_as_its_header_says(tmp_path):
    """The header checks (validate, the agent's) read the orientation without decoding; a PNG whose EXIF
    block follows its pixels is upright to them, so decoding leaves it as stored too: sizes agree."""
    pixels = np.zeros((40, 100, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    early = tmp_path / "early.png"
    Image.fromarray(pixels).save(early, exif=exif)
    data = early.read_bytes()
    start = data.index(b"eXIf") - 4  # the chunk: length, type, data, CRC
    length = int.from_bytes(data[start:start + 4], "big")
    chunk = data[start:start + 12 + length]
    rest = data[:start] + data[start + len(chunk):]
    end = rest.index(b"IEND") - 4
    (tmp_path / "late.png").write_bytes(rest[:end] + chunk + rest[end:])
    with open_header(early) as im:
        assert upright_size(im) == (40, 100)
    assert open_image(early).size == (40, 100)
    with open_header(tmp_path / "late.png") as im:
        assert upright_size(im) == (100, 40)
    late = open_image(tmp_path / "late.png")
    assert late.size == (100, 40)
    assert late.getexif().get(0x0112) == 6  # the block is there: it is only not looked for


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_a_16_bit_grey_image_keeps_its_high_byte(tmp_path, mode):
    """Pillow converts 16-bit grey to RGB by clipping at 255, which turned such a scan nearly white; OpenCV
    (hence MMDetection) and Pillow's own 16-bit colour keep the high byte."""
    values = (np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    image = Image.open(path)
    if mode == "I":  # what older Pillow gives for the same file
        image = image.convert("I")
        image.save(tmp_path / "grey32.tif")
        path = tmp_path / "grey32.tif"
    rgb = np.asarray(open_image(path))
    assert rgb.dtype == np.uint8 and rgb.shape == (48, 64, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], values >> 8)
