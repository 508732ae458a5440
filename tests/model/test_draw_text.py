"""`reallod detect`'s pictures draw expressions beyond ASCII as letters ("café crème"), not as boxes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFont

from reallod.model.detections import Detections
from reallod.model.draw import draw_detections

NOT_A_GLYPH = "\ue000"  # private use: no font here has it, every one draws its box for it


def _picture(expression: str) -> np.ndarray:
    dets = Detections([[20, 30, 150, 120]], [0.9], [0], [expression])
    return np.asarray(draw_detections(Image.new("RGB", (200, 150), (90, 120, 150)), dets, score_thr=0.0))


def test_accented_expressions_are_drawn_as_letters():
    try:
        ImageFont.truetype("DejaVuSans.ttf", 10)  # or any other of reallod.data.show.FONT_FILES
    except OSError:
        pytest.skip("no TrueType font with accented letters installed here")
    crème = _picture("café crème")
    assert not np.array_equal(crème, _picture(f"caf{NOT_A_GLYPH} cr{NOT_A_GLYPH}me"))  # Pillow's own font: boxes
    assert not np.array_equal(crème, _picture("caf? cr?me"))


def test_letters_the_font_lacks_never_stop_the_drawing(monkeypatch):
    assert _picture("一只狗").shape == (150, 200, 3)  # a TrueType font without them: boxes
    monkeypatch.setattr("reallod.model.draw.label_font", lambda size: ImageFont.load_default_imagefont())
    assert _picture("一只狗 café").shape == (150, 200, 3)  # Pillow's bitmap font (no FreeType): "??? café"
