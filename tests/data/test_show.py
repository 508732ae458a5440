"""`reallod data show`: where the PNGs go, and text beyond ASCII drawn as letters, not boxes (from another
installed font where the label font lacks them)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFont

from reallod.data import Record, write_records
from reallod.data.show import render_record
from tests.cli_helpers import run_cli

NOT_A_GLYPH = "\ue000"  # private use: no font here has it, every one draws its box for it


def _record(expression: str) -> Record:
    return Record.from_dict({
        "filename": "a.png", "height": 120, "width": 160,
        "pairs": {"llm": [{"bboxes": [[10, 10, 90, 100]], "category": "cup", "relation": "single",
                           "positive_expressions": [expression], "negative_expressions": [f"not {expression}"]}]}})


def _pixels(expression: str) -> np.ndarray:
    return np.asarray(render_record(_record(expression), Image.new("RGB", (160, 120), (90, 120, 150))))


@pytest.fixture
def truetype():
    try:
        ImageFont.truetype("DejaVuSans.ttf", 10)  # or any other of show.FONT_FILES
    except OSError:
        pytest.skip("no TrueType font with accented letters installed here")


def test_accented_letters_are_drawn_as_letters(truetype):
    crème = _pixels("café crème")
    assert not np.array_equal(crème, _pixels(f"caf{NOT_A_GLYPH} cr{NOT_A_GLYPH}me"))  # Pillow's own font: boxes
    assert not np.array_equal(crème, _pixels("caf? cr?me"))
    from reallod.data.show import label_font

    font = label_font(20)
    mask = {c: np.asarray(font.getmask(c)) for c in ("é", NOT_A_GLYPH)}
    assert mask["é"].any() and not np.array_equal(mask["é"], mask[NOT_A_GLYPH])
    assert font.getbbox("é")[1] < font.getbbox("e")[1]  # its accent reaches above the letter


def test_letters_no_font_has_never_stop_the_drawing(monkeypatch):
    assert _pixels("一只狗 🐕").shape[1] >= 160  # a TrueType font without them: boxes
    monkeypatch.setattr("reallod.data.show.label_font", lambda size: ImageFont.load_default_imagefont())
    assert _pixels("一只狗 café").shape[1] >= 160  # Pillow's bitmap font (no FreeType) raised UnicodeEncodeError


def test_letters_the_label_font_lacks_come_from_a_font_that_has_them(monkeypatch):
    """Liberation Sans as the label font lacks the snowman (U+2603) that DejaVu Sans has, as a Latin font
    lacks Chinese (this machine may have no CJK font): the label on the box and the panel take it from DejaVu."""
    from reallod.data import show

    try:
        dejavu, liberation = (str(ImageFont.truetype(n, 10).path) for n in ("DejaVuSans.ttf",
                                                                            "LiberationSans-Regular.ttf"))
    except OSError:
        pytest.skip("DejaVu Sans or Liberation Sans is not installed here")
    caches = [getattr(show, name) for name in ("label_font", "_fallback", "_sized") if hasattr(show, name)]
    for cached in caches:
        cached.cache_clear()
    monkeypatch.setattr(show, "_font_file", lambda: liberation)
    try:
        snowman = _pixels("a ☃ snowman")
        assert not np.array_equal(snowman, _pixels(f"a {NOT_A_GLYPH} snowman"))  # before: a box for both
        assert show.font_for("+ a ☃ snowman", 17).path == dejavu
    finally:
        for cached in caches:
            cached.cache_clear()


def test_an_out_that_is_a_file_is_refused(tmp_path, capsys):
    Image.new("RGB", (160, 120)).save(tmp_path / "a.png")
    src = tmp_path / "rd.jsonl"
    write_records(src, [_record("a cup").to_dict()])
    before = src.read_bytes()
    code, _, err = run_cli(["data", "show", src, "--images", tmp_path, "--out", src], capsys)
    assert code == 2 and f"--out {src}: the input file, not a folder; give a folder for the PNGs" in err, err
    assert src.read_bytes() == before
    (tmp_path / "notes.txt").write_text("x")
    for out in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "pngs"):
        code, _, err = run_cli(["data", "show", src, "--images", tmp_path, "--out", out], capsys)
        assert code == 2 and f"--out {out}: " in err and "unexpected" not in err, err
    assert "a file, not a folder" in run_cli(["data", "show", src, "--images", tmp_path, "--out",
                                              tmp_path / "notes.txt"], capsys)[2]


def test_an_image_not_of_its_records_size_is_said(tmp_path, capsys):
    """Its boxes were drawn where they do not fit, without a word (`data validate --images` flags it)."""
    Image.new("RGB", (16, 12)).save(tmp_path / "a.png")  # the record says 160x120
    src = tmp_path / "rd.jsonl"
    write_records(src, [_record("a cup").to_dict()])
    code, out, err = run_cli(["data", "show", src, "--images", tmp_path, "--out", tmp_path / "pngs"], capsys)
    assert code == 0, err
    assert (f"1 image(s) not of their record's size, their boxes drawn as recorded (e.g. {src}:1 a.png is 16x12, "
            "its record says 160x120") in " ".join(out.split())
    Image.new("RGB", (160, 120)).save(tmp_path / "a.png")
    assert "not of their record's size" not in run_cli(["data", "show", src, "--images", tmp_path, "--out",
                                                        tmp_path / "pngs2"], capsys)[1]


def test_a_run_that_draws_nothing_makes_no_folder_and_a_missing_root_is_said(tmp_path, capsys):
    """An empty input said "nothing written" and left the --out folder made; an image root that does not
    exist was "not a directory"."""
    src = tmp_path / "empty.jsonl"
    src.write_text("")
    code, _, err = run_cli(["data", "show", src, "--images", tmp_path, "--out", tmp_path / "pngs"], capsys)
    assert code == 2 and "nothing written" in err and not (tmp_path / "pngs").exists()
    code, _, err = run_cli(["data", "show", src, "--images", tmp_path / "nope", "--out", tmp_path / "pngs"], capsys)
    assert code == 2 and "nope: image root not found (no such folder)" in err, err
