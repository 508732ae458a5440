"""`reallod detect`'s pictures draw expressions beyond ASCII as letters ("café crème"), not as boxes, and the
letters the label font lacks (Chinese) from another installed font that has them."""

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
    monkeypatch.setattr("reallod.data.show.label_font", lambda size: ImageFont.load_default_imagefont())
    assert _picture("一只狗 café").shape == (150, 200, 3)  # Pillow's bitmap font (no FreeType): "??? café"


def _installed(name: str) -> str:
    try:
        return str(ImageFont.truetype(name, 10).path)
    except OSError:
        pytest.skip(f"{name} is not installed here")


@pytest.fixture
def fonts(monkeypatch):
    """reallod.data.show's font look-ups afresh, with Liberation Sans as the label font: it lacks the
    snowman (U+2603) that DejaVu Sans has, as a Latin font lacks the letters of a CJK one (this machine
    may have no CJK font)."""
    from reallod.data import show

    caches = [getattr(show, name) for name in ("label_font", "_font_file", "_fallback_fonts", "_probe", "_has",
                                               "_fallback", "_sized") if hasattr(show, name)]

    def forget():
        for cached in caches:
            cached.cache_clear()
        getattr(show, "_warned", []).clear()

    dejavu = _installed("DejaVuSans.ttf")
    liberation = _installed("LiberationSans-Regular.ttf")
    forget()
    monkeypatch.setattr(show, "_font_file", lambda: liberation)
    yield show, dejavu, liberation
    forget()


def test_letters_the_label_font_lacks_are_drawn_from_a_font_that_has_them(fonts):
    show, dejavu, liberation = fonts
    snowman = _picture("a ☃ snowman")
    assert not np.array_equal(snowman, _picture(f"a {NOT_A_GLYPH} snowman"))  # before: a box, as for this
    assert show.font_for("a cup", 20).path == liberation  # the label font while it has every letter
    assert show.font_for("a ☃ snowman", 20).path == dejavu


def test_without_fontconfig_the_font_folders_are_searched(fonts, monkeypatch, tmp_path):
    show, dejavu, _ = fonts
    (tmp_path / "fonts" / "dejavu").mkdir(parents=True)
    (tmp_path / "fonts" / "dejavu" / "DejaVuSans.ttf").symlink_to(dejavu)
    monkeypatch.setattr(show.shutil, "which", lambda name: None)
    monkeypatch.setattr(show, "FONT_DIRS", (str(tmp_path / "nowhere"), str(tmp_path / "fonts")))
    assert show.font_for("a ☃ snowman", 20).path == str(tmp_path / "fonts" / "dejavu" / "DejaVuSans.ttf")


def test_letters_no_font_has_warn_once_and_fonts_are_looked_for_once(fonts, monkeypatch):
    """Many pictures, labels with letters no font here has (private use): one warning in all, and the
    installed fonts listed once, not per picture or label."""
    show, _, liberation = fonts
    import subprocess

    asked = []
    real_run = subprocess.run
    monkeypatch.setattr(show.subprocess, "run", lambda *a, **k: asked.append(a) or real_run(*a, **k))
    with pytest.warns(UserWarning) as said:
        for k in range(6):
            _picture(f"the thing {chr(0xE000 + k)}{chr(0xE001 + k)} ☃")
    assert len(said) == 1 and "no installed font has the letters" in str(said[0].message), [str(w) for w in said]
    assert len(asked) <= 1
    assert show.font_for(f"the thing {NOT_A_GLYPH}", 20).path == liberation  # boxes, as before
