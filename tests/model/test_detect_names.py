"""The names `reallod detect` writes its outputs under: one file per image whatever the image names, and
an image whose output name the file system cannot hold skipped, not the run stopped."""

from __future__ import annotations

import json
import random

import pytest

from reallod.errors import ConfigError
from reallod.model.detect_journal import DetectOptions, output_names, shared_stems
from tests.cli_helpers import run_cli


def _args(images, model, out):
    return ["detect", str(images), str(model), "--texts", "an astronaut", "--out-dir", str(out), "--device", "cpu",
            "--topk", "3"]


def _outputs(names, options=None):
    options = options or DetectOptions()
    shared = shared_stems(names, options)
    return {name: output_names(name, options, name in shared) for name in names}


def test_every_image_gets_its_own_outputs_whatever_the_names_and_their_order():
    """a.jpg, a.png and a.jpg.png: a.jpg's whole-name JSON was a.jpg.png's own (preds/a.jpg.json)."""
    names = ["a.jpg", "a.png", "a.jpg.png", "b.tif", "b.tif.png", "c.gif", "c.png", "d/e.jpg", "d/e.png", "f.jpg",
             "g.tif", "g.png.png", "g.png"]
    with pytest.raises(ConfigError, match=r"b.tif and b.tif.png would both be written as .*vis/b.tif.png"):
        shared_stems(["b.tif", "b.tif.png", "b.png"], DetectOptions())
    names.remove("b.tif.png")
    first = _outputs(names)
    rng = random.Random(0)
    for _ in range(20):  # any listing order: the same names
        rng.shuffle(names)
        assert _outputs(names) == first
    files = [f for pair in first.values() for f in pair]
    assert len(files) == len(set(files)) == 2 * len(names)
    assert first["a.jpg"] == ("preds/a.jpg.json", "vis/a.jpg")
    assert first["a.jpg.png"] == ("preds/a.jpg.png.json", "vis/a.jpg.png")
    assert first["f.jpg"] == ("preds/f.json", "vis/f.jpg")  # MMDetection's names where nothing clashes
    assert first["b.tif"] == ("preds/b.json", "vis/b.png")
    assert first["c.gif"] == ("preds/c.gif.json", "vis/c.gif.png")
    # the clash that widening cannot undo is refused only for the outputs written
    shared_stems(["b.tif", "b.tif.png", "b.png"], DetectOptions(save_vis=False))


def test_images_whose_names_would_collide_each_keep_their_own_files(capsys, tiny_model_dir, tmp_path, photo):
    """The summary said 3 JSON and 2 were there, and reruns redid one image each time, flip-flopping."""
    d = tmp_path / "in3"
    d.mkdir()
    photo.save(d / "a.jpg")
    photo.rotate(90, expand=True).save(d / "a.png")
    photo.rotate(180).save(d / "a.jpg.png")
    out = tmp_path / "out3"
    code, stdout, err = run_cli(_args(d, tiny_model_dir, out), capsys)
    assert code == 0 and "3 JSON" in stdout, err
    preds = {p.name: json.loads(p.read_text())["image"] for p in (out / "preds").iterdir()}
    assert preds == {"a.jpg.json": str(d / "a.jpg"), "a.png.json": str(d / "a.png"),
                     "a.jpg.png.json": str(d / "a.jpg.png")}
    for _ in range(2):
        code, stdout, err = run_cli(_args(d, tiny_model_dir, out), capsys)
        assert code == 0 and "3 images (3 done by an earlier run)" in stdout, err


def test_a_clash_no_name_can_undo_is_refused_before_loading(capsys, tiny_model_dir, tmp_path, photo, monkeypatch):
    d = tmp_path / "in"
    d.mkdir()
    for name in ("x.tif", "x.tif.png", "x.png"):
        photo.save(d / name)
    monkeypatch.setattr("reallod.model.loading.load_detector", lambda *a, **k: pytest.fail("the model was loaded"))
    code, _, err = run_cli(_args(d, tiny_model_dir, tmp_path / "out"), capsys)
    assert code != 0 and "x.tif and x.tif.png would both be written as" in err and "rename one" in err, err
    assert not (tmp_path / "out").exists()


def test_an_image_whose_output_name_is_too_long_is_skipped_and_the_run_goes_on(capsys, tiny_model_dir, tmp_path,
                                                                              photo):
    """'File name too long', naming a temporary file, stopped the run at that image, and every rerun."""
    d = tmp_path / "in2"
    d.mkdir()
    long = "x" * 240  # its own output name fits: preds/xxx.json is 245 bytes
    longer = "写真" * 41 + "a"  # 247 bytes: as a whole name (beside .png) its JSON would be 256
    for name in ("aaa.jpg", f"{long}.jpg", f"{longer}.jpg", f"{longer}.png", "zzz.jpg"):
        photo.save(d / name)
    out = tmp_path / "out2"
    for rerun in (False, True):
        code, stdout, err = run_cli(_args(d, tiny_model_dir, out), capsys)
        assert code == 0 and "Traceback" not in err, err
        assert "3 images" in stdout and "2 skipped" in stdout and "3 JSON" in stdout, stdout
        assert f"{d / longer}.jpg: its output in {out / 'preds'} would have a name of 256 bytes" in err
        assert f"{d / longer}.png: its output" in err and "shorter name" in err
        assert ("3 done by an earlier run" in stdout) == rerun
    assert sorted(p.name for p in (out / "preds").iterdir()) == ["aaa.json", f"{long}.json", "zzz.json"]
    assert not [p for p in out.rglob(".*")]  # no temporary file left behind
