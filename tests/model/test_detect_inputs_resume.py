"""`reallod detect` resumed over inputs that changed since: an image replaced under its name, a same-stem
image added or removed (its output names change), a journal line edited into another shape, and
expressions the model cannot take, refused before anything is written."""

from __future__ import annotations

import json

import orjson
import pytest
from PIL import Image

from reallod.errors import ConfigError, DataError
from reallod.model.detect_journal import JOURNAL_NAME
from reallod.model.texts import parse_texts
from tests.cli_helpers import run_cli


def _args(images, model, out, texts="an astronaut"):
    return ["detect", str(images), str(model), "--texts", texts, "--out-dir", str(out), "--device", "cpu",
            "--topk", "2"]


def _outputs(out):
    return sorted(str(p.relative_to(out)) for sub in ("preds", "vis") for p in (out / sub).rglob("*") if p.is_file())


def _edit_journal(out, edit):
    """Rewrite each entry line of the journal with ``edit(line object)`` (None: the line as it was)."""
    path = out / JOURNAL_NAME
    header, *lines = path.read_bytes().splitlines()
    edited = [orjson.dumps(new) if (new := edit(orjson.loads(line))) is not None else line for line in lines]
    path.write_bytes(b"\n".join([header, *edited]) + b"\n")


def test_an_image_replaced_under_its_name_is_detected_again(capsys, five_images, tiny_model_dir, tmp_path, calls):
    out = tmp_path / "out"
    assert run_cli(_args(five_images, tiny_model_dir, out), capsys)[0] == 0
    Image.new("RGB", (320, 50), (200, 30, 30)).save(five_images / "p1.jpg")
    calls[:] = []
    code, stdout, err = run_cli(_args(five_images, tiny_model_dir, out), capsys)
    assert code == 0, err
    assert calls == [(320, 50)] and "5 images (4 done by an earlier run)" in stdout
    pred = json.loads((out / "preds" / "p1.json").read_text())
    assert (pred["height"], pred["width"]) == (50, 320)
    with Image.open(out / "vis" / "p1.jpg") as vis:
        assert vis.size == (320, 50)

    picture = five_images / "p2.jpg"  # the same bytes, touched: another file for all the journal knows
    stat = picture.stat()
    import os

    os.utime(picture, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    calls[:] = []
    assert run_cli(_args(five_images, tiny_model_dir, out), capsys)[0] == 0 and len(calls) == 1


def test_a_journal_of_an_older_reallod_is_detected_again_with_a_message(capsys, five_images, tiny_model_dir,
                                                                       tmp_path, calls):
    """Its entries do not say what the image files were: nothing tells an image replaced since."""
    out = tmp_path / "out"
    assert run_cli(_args(five_images, tiny_model_dir, out), capsys)[0] == 0
    _edit_journal(out, lambda line: {**line, "result": {k: v for k, v in line["result"].items() if k != "source"}})
    calls[:] = []
    code, stdout, err = run_cli(_args(five_images, tiny_model_dir, out), capsys)
    assert code == 0, err
    assert len(calls) == 5 and "earlier run" not in stdout
    assert "5 journal entries of an older reallod do not note the image file's size and time, so their images are " \
           "detected again" in err
    calls[:] = []
    assert run_cli(_args(five_images, tiny_model_dir, out), capsys)[0] == 0 and calls == []


@pytest.mark.parametrize("edit", [
    lambda line: {**line, "result": ["x"]},
    lambda line: {**line, "result": None},
    lambda line: {**line, "task_id": ["p0.jpg"]},
    lambda line: {"task_id": line["task_id"]},
    lambda line: {**line, "result": {**line["result"], "pred": [7, 1, 2]}},
    lambda line: {**line, "result": {**line["result"], "input": ["x"], "source": "big"}},
    lambda line: [line],
], ids=["result-list", "result-null", "name-list", "no-result", "file-name-number", "input-list", "line-list"])
def test_a_journal_line_of_another_shape_is_detected_again(capsys, five_images, tiny_model_dir, tmp_path, calls,
                                                           edit):
    """As a torn line is: the others stay done (it was `unexpected AttributeError`)."""
    out = tmp_path / "out"
    assert run_cli(_args(five_images, tiny_model_dir, out), capsys)[0] == 0
    _edit_journal(out, lambda line: edit(line) if line["task_id"] == "p0.jpg" else None)
    calls[:] = []
    code, stdout, err = run_cli(_args(five_images, tiny_model_dir, out), capsys)
    assert code == 0, err
    assert len(calls) == 1 and "5 images (4 done by an earlier run)" in stdout
    calls[:] = []
    assert run_cli(_args(five_images, tiny_model_dir, out), capsys)[0] == 0 and calls == []


def test_a_same_stem_image_added_or_removed_renames_the_outputs(capsys, photo, tiny_model_dir, tmp_path, calls):
    """`photo.png` alone writes `preds/photo.json`; once `photo.jpg` is there, both keep their suffix
    (`preds/photo.png.json`, `preds/photo.jpg.json`) and the old name is gone, and back again."""
    images, out = tmp_path / "in", tmp_path / "out"
    images.mkdir()
    photo.save(images / "photo.png")
    photo.save(images / "other.tif")
    assert run_cli(_args(images, tiny_model_dir, out), capsys)[0] == 0
    assert _outputs(out) == ["preds/other.json", "preds/photo.json", "vis/other.png", "vis/photo.png"]

    photo.rotate(90, expand=True).save(images / "photo.jpg")
    photo.rotate(90, expand=True).save(images / "other.png")  # its picture's name, vis/other.png, was the TIFF's
    calls[:] = []
    code, stdout, err = run_cli(_args(images, tiny_model_dir, out), capsys)
    assert code == 0, err
    assert len(calls) == 4 and "earlier run" not in stdout
    assert _outputs(out) == ["preds/other.png.json", "preds/other.tif.json", "preds/photo.jpg.json",
                             "preds/photo.png.json", "vis/other.png", "vis/other.tif.png", "vis/photo.jpg",
                             "vis/photo.png"]
    assert json.loads((out / "preds" / "other.png.json").read_text())["image"].endswith("other.png")
    with Image.open(out / "vis" / "other.png") as vis:
        assert vis.size == (150, 200)  # the PNG's picture, not the TIFF's

    (images / "photo.jpg").unlink()
    calls[:] = []
    assert run_cli(_args(images, tiny_model_dir, out), capsys)[0] == 0 and len(calls) == 1
    assert "preds/photo.json" in _outputs(out) and "preds/photo.png.json" not in _outputs(out)
    calls[:] = []
    assert run_cli(_args(images, tiny_model_dir, out), capsys)[0] == 0 and calls == []


def test_an_old_name_changed_since_is_kept(capsys, photo, tiny_model_dir, tmp_path, calls):
    """Only files the journal lists, unchanged since, are deleted: one the user edited stays."""
    images, out = tmp_path / "in", tmp_path / "out"
    images.mkdir()
    photo.save(images / "photo.png")
    assert run_cli(_args(images, tiny_model_dir, out), capsys)[0] == 0
    (out / "preds" / "photo.json").write_text("{}")
    photo.save(images / "photo.jpg")
    assert run_cli(_args(images, tiny_model_dir, out), capsys)[0] == 0
    assert (out / "preds" / "photo.json").read_text() == "{}"
    assert {"preds/photo.png.json", "preds/photo.jpg.json"} <= set(_outputs(out))


def test_an_expression_empty_once_sanitised_is_refused_before_anything(capsys, five_images, tiny_model_dir,
                                                                       tmp_path, monkeypatch, calls):
    """It was refused after the model was loaded and a journal header written, so the next run said the
    settings had changed although nothing was written."""
    with pytest.raises(ConfigError, match=r"--texts: the expression '\?' is empty once '\.' and '\?' are removed"):
        parse_texts(["a dog . ?"])
    assert parse_texts(["Mr. Smith . a dog ?"]) == ["Mr. Smith", "a dog ?"]
    texts = tmp_path / "texts.txt"  # a file of thousands of lines: its line is named
    texts.write_text("a dog\n\n   \n?\n")
    with pytest.raises(DataError, match=r"texts\.txt:4: the expression '\?' is empty once"):
        parse_texts([str(texts)])
    with pytest.raises(ConfigError, match=r"no expressions given: --texts holds only whitespace and ' \.' "):
        parse_texts([" . . "])

    import reallod.model.loading

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(reallod.model.loading, "load_detector", no_loading)
        code, _, err = run_cli(_args(five_images, tiny_model_dir, out, texts="a dog . ?"), capsys)
    assert code != 0 and "the expression '?' is empty" in err and not out.exists()
    code, _, err = run_cli(_args(five_images, tiny_model_dir, out, texts="a dog"), capsys)
    assert code == 0 and "other settings" not in err


def test_run_detect_refuses_a_bad_expression_before_touching_the_journal(five_images, tiny_detector, tmp_path,
                                                                         calls):
    from reallod.model.detect import DetectOptions, run_detect

    out = tmp_path / "out"

    def run(texts):
        return run_detect(five_images, tiny_detector, texts, progress=False, echo=lambda m: None,
                          options=DetectOptions(out_dir=out, save_vis=False))

    run(["a dog"])
    before = (out / JOURNAL_NAME).read_bytes()
    with pytest.raises(ConfigError, match=r"expression 1 \('\.\.\.'\) is empty"):
        run(["a dog", "..."])
    assert (out / JOURNAL_NAME).read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == [JOURNAL_NAME, "preds"]
    calls[:] = []
    assert run(["a dog"]).resumed == 5 and calls == []
