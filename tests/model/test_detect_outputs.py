"""Where `reallod detect` writes, and what its journal keeps: outputs never replace the input, a model
path typed another way or a run over part of the folder loses no work, and earlier outputs inside the
input are not taken for images."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest

from reallod.errors import ConfigError
from reallod.model import detect
from reallod.model.detect import find_images
from reallod.model.detect_journal import JOURNAL_NAME
from tests.cli_helpers import run_cli


def _args(images, model, out, texts="an astronaut"):
    return ["detect", str(images), str(model), "--texts", texts, "--out-dir", str(out), "--device", "cpu",
            "--topk", "3"]


def _digests(folder):
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def no_loading(monkeypatch):
    """The model must not be loaded: the command is refused before."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("reallod.model.loading.load_detector", refuse)


def test_outputs_that_would_write_over_the_input_are_refused_before_loading(capsys, five_images, tiny_model_dir,
                                                                             tmp_path, no_loading):
    out = tmp_path / "out"
    shutil.copytree(five_images, out / "vis")
    (out / "preds").mkdir()
    shutil.copy(five_images / "p1.jpg", out / "preds" / "p1.jpg")
    (tmp_path / "linked").symlink_to(out / "vis", target_is_directory=True)
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "vis").symlink_to(five_images, target_is_directory=True)
    before = _digests(out), _digests(five_images)
    for images, out_dir, says in [
        (out / "vis", out, f"{out / 'vis'} is the input"),  # reallod detect outputs/vis MODEL
        (out / "vis" / "p0.jpg", out, f"{out / 'vis'} holds the input"),
        (out / "preds" / "p1.jpg", out, f"{out / 'preds'} holds the input"),
        (tmp_path / "linked", out, f"{out / 'vis'} is the input"),  # the input is a link to OUT/vis
        (five_images / "sub", tmp_path / "o2", f"{tmp_path / 'o2' / 'vis'} holds the input"),  # OUT/vis a link to it
    ]:
        code, _, err = run_cli(_args(images, tiny_model_dir, out_dir), capsys)
        assert code == 2, err
        assert f"--out-dir {out_dir}: " in err and says in err and "would be written over" in err, err
    assert (_digests(out), _digests(five_images)) == before


def test_an_out_dir_that_is_a_file_is_refused_before_loading(capsys, five_images, tiny_model_dir, tmp_path,
                                                            no_loading):
    (tmp_path / "afile").write_text("x")
    for out_dir in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        code, _, err = run_cli(_args(five_images, tiny_model_dir, out_dir), capsys)
        assert code == 2 and f"--out-dir {out_dir}: {tmp_path / 'afile'} is a file, not a folder" in err, err
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "vis").write_text("x")
    code, _, err = run_cli(_args(five_images, tiny_model_dir, tmp_path / "out"), capsys)
    assert code == 2 and f"{tmp_path / 'out' / 'vis'} is a file, not a folder" in err, err
    assert (tmp_path / "out" / "vis").read_text() == "x" and not (tmp_path / "out" / "preds").exists()


def test_the_model_path_typed_another_way_keeps_the_work(capsys, five_images, tiny_model_dir, tmp_path, calls,
                                                        monkeypatch):
    out = tmp_path / "out"
    monkeypatch.chdir(tiny_model_dir.parent)
    assert run_cli(_args(five_images, tiny_model_dir.name, out), capsys)[0] == 0
    assert len(calls) == 5
    (tmp_path / "elsewhere").mkdir()
    for cwd, model in [(tiny_model_dir.parent, f"./{tiny_model_dir.name}/"), (tiny_model_dir.parent, tiny_model_dir),
                       (tmp_path / "elsewhere", os.path.relpath(tiny_model_dir, tmp_path / "elsewhere"))]:
        monkeypatch.chdir(cwd)
        calls[:] = []
        code, stdout, err = run_cli(_args(five_images, model, out), capsys)
        assert code == 0 and calls == [] and "5 images (5 done by an earlier run)" in stdout, (model, err)
        assert "other settings" not in err


def test_the_message_names_the_settings_that_changed(capsys, five_images, tiny_model_dir, tmp_path, calls):
    out = tmp_path / "out"
    assert run_cli(_args(five_images, tiny_model_dir, out), capsys)[0] == 0
    code, _, err = run_cli([*_args(five_images, tiny_model_dir, out), "--palette", "voc", "--mode", "concat"], capsys)
    assert code == 0 and "other settings (changed: --mode, --palette); every image is detected again" in err, err
    other = tmp_path / "other_model"
    shutil.copytree(tiny_model_dir, other)  # the same weights in another folder: another MODEL
    code, _, err = run_cli([*_args(five_images, other, out), "--palette", "voc", "--mode", "concat"], capsys)
    assert code == 0 and "other settings (changed: MODEL); every image is detected again" in err, err


def test_a_run_over_part_of_the_folder_or_another_input_keeps_the_folders_work(capsys, five_images, tiny_model_dir,
                                                                                tmp_path, calls, photo):
    out = tmp_path / "out"
    assert run_cli(_args(five_images, tiny_model_dir, out), capsys)[0] == 0
    calls[:] = []
    code, stdout, err = run_cli(_args(five_images / "p1.jpg", tiny_model_dir, out), capsys)
    assert code == 0 and calls == [] and "1 images (1 done by an earlier run)" in stdout, err
    code, _, err = run_cli(_args(five_images / "sub", tiny_model_dir, out), capsys)  # its own names: preds/p4.json
    assert code == 0 and len(calls) == 1, err
    calls[:] = []
    code, stdout, err = run_cli(_args(five_images, tiny_model_dir, out), capsys)
    assert code == 0 and calls == [] and "5 images (5 done by an earlier run)" in stdout, err
    whole = _digests(out)

    other = tmp_path / "other"  # another folder with an image of the same name: same outputs, its own entry
    other.mkdir()
    photo.resize((120, 90)).save(other / "p0.jpg")
    assert run_cli(_args(other, tiny_model_dir, out), capsys)[0] == 0
    assert calls == [(120, 90)]  # never taken for images/p0.jpg, which it is not
    calls[:] = []
    code, stdout, _ = run_cli(_args(five_images, tiny_model_dir, out), capsys)
    assert code == 0 and calls == [(200, 150)] and "5 images (4 done by an earlier run)" in stdout  # p0 again
    del whole[JOURNAL_NAME]
    assert {k: v for k, v in _digests(out).items() if k != JOURNAL_NAME} == whole


def test_outputs_inside_the_input_never_become_inputs(capsys, five_images, tiny_model_dir, tmp_path, calls):
    """--out-dir the input folder itself, then another; and an earlier run's folder inside the input."""
    for _ in range(2):
        calls[:] = []
        code, stdout, err = run_cli(_args(five_images, tiny_model_dir, five_images), capsys)
        assert code == 0 and "5 images" in stdout, err
    assert calls == [] and not (five_images / "vis" / "vis").exists()
    calls[:] = []
    code, stdout, err = run_cli(_args(five_images, tiny_model_dir, tmp_path / "elsewhere"), capsys)
    assert code == 0 and "5 images, " in stdout and len(calls) == 5, err  # not vis/* nor preds/*
    inner = five_images / "sub" / "outputs"
    assert run_cli(_args(five_images / "sub", tiny_model_dir, inner), capsys)[0] == 0
    code, stdout, err = run_cli(_args(five_images, tiny_model_dir, tmp_path / "third"), capsys)
    assert code == 0 and "5 images, " in stdout, err


def _journal(folder, *written):
    """A detect journal in ``folder`` listing ``written`` (paths relative to it) as a run's outputs."""
    from reallod.runs.journal import Journal

    entries = [(f"img{i}", {"pred": None, "vis": [rel, 1, 1]}) for i, rel in enumerate(written)]
    Journal.rewrite(folder / JOURNAL_NAME, {"settings": 1}, entries, keep=lambda e: None).close()


def test_find_images_passes_over_the_pictures_detect_wrote_and_refuses_the_users(tmp_path, photo):
    """An output folder's vis/ and preds/ were passed over whatever they held: the user's own photos in
    photos/vis/ with --out-dir photos were drawn over and never detected, without a word."""
    d = tmp_path / "photos"
    for name in ("a.jpg", "vis/b.jpg", "preds/c.png", "old/vis/d.jpg", "old/e.jpg", "keep/vis/f.jpg"):
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        photo.save(d / name)
    assert find_images(d)[1] == ["a.jpg", "keep/vis/f.jpg", "old/e.jpg", "old/vis/d.jpg", "preds/c.png", "vis/b.jpg"]
    _journal(d / "old", "vis/d.jpg")  # an earlier run wrote old/vis/d.jpg: its other images are no output
    assert find_images(d)[1] == ["a.jpg", "keep/vis/f.jpg", "old/e.jpg", "preds/c.png", "vis/b.jpg"]
    with pytest.raises(ConfigError, match=r"--out-dir .*photos: .*photos/preds holds 1 images no detect run wrote "
                                          r"\(.*photos/preds/c.png\).*move them out of"):
        find_images(d, d)  # no run wrote preds/c.png (nor vis/b.jpg): they would be passed over
    with pytest.raises(ConfigError, match=r"--out-dir .*keep: .*keep/vis holds 1 images no detect run wrote "
                                          r"\(.*keep/vis/f.jpg\)"):
        find_images(d, d / "keep")
    _journal(d, "vis/b.jpg")  # the input folder was an --out-dir: its vis/b.jpg is a picture, preds/c.png no
    with pytest.raises(ConfigError, match=r"photos/preds: holds 1 images .*photos/preds/c.png"):
        find_images(d)
    (d / "preds" / "c.png").unlink()
    assert find_images(d)[1] == ["a.jpg", "keep/vis/f.jpg", "old/e.jpg"]
    assert find_images(d, d)[1] == ["a.jpg", "keep/vis/f.jpg", "old/e.jpg"]
    photo.save(d / "vis" / "a.jpg")  # a picture of a.jpg a killed run wrote before its journal noted it
    assert find_images(d, d)[1] == ["a.jpg", "keep/vis/f.jpg", "old/e.jpg"]


def test_photos_in_the_out_dirs_vis_are_refused_before_loading_and_kept(capsys, tiny_model_dir, tmp_path, photo,
                                                                       no_loading):
    """reallod detect in1 --out-dir in1 drew in1/a.jpg over the user's in1/vis/a.jpg and never detected
    in1/vis/b.jpg."""
    d = tmp_path / "in1"
    (d / "vis").mkdir(parents=True)
    photo.save(d / "a.jpg")
    photo.rotate(90).save(d / "vis" / "a.jpg")
    photo.rotate(180).save(d / "vis" / "b.jpg")
    before = _digests(d)
    code, _, err = run_cli(_args(d, tiny_model_dir, d), capsys)
    assert code != 0 and "in1/vis holds 2 images no detect run wrote" in err and "Traceback" not in err, err
    assert _digests(d) == before


def _outputs(out):
    return {k: v for k, v in _digests(out).items() if not k.startswith("detect.journal")}


def test_other_settings_over_other_images_are_refused_before_loading(capsys, five_images, tiny_model_dir, tmp_path,
                                                                     calls, monkeypatch):
    """The earlier run's files of the images this run does not detect would stay beside this run's: refused
    (another --out-dir, or --discard-earlier), never a folder of two settings' results without a word."""
    out = tmp_path / "out"
    assert run_cli(_args(five_images, tiny_model_dir, out), capsys)[0] == 0
    before = _digests(out)
    with monkeypatch.context() as m:
        m.setattr("reallod.model.loading.load_detector", lambda *a, **k: pytest.fail("the model was loaded"))
        for images, texts, extra, changed in [
            (five_images / "p1.jpg", "a helmet", [], "--texts"),  # a few images of the folder, other texts
            (five_images, "an astronaut", ["--no-save-vis"], "--no-save-vis"),  # the pictures would stay
        ]:
            code, _, err = run_cli([*_args(images, tiny_model_dir, out, texts), *extra], capsys)
            assert code == 2 and f"--out-dir {out}: " in err and f"other settings (changed: {changed})" in err, err
            assert "give another --out-dir, or pass --discard-earlier" in err, err
    other = shutil.copytree(tiny_model_dir, tmp_path / "other_model")  # another MODEL: known once it is loaded
    calls[:] = []
    code, _, err = run_cli(_args(five_images / "p1.jpg", other, out), capsys)
    assert code == 2 and "other settings (changed: MODEL)" in err and calls == [], err
    assert _digests(out) == before

    (out / "preds" / "mine.txt").write_text("the user's own file")
    (out / "preds" / "p2.json").write_text("{}")  # edited since: no longer the run's
    code, _, err = run_cli([*_args(five_images / "p1.jpg", tiny_model_dir, out, "a helmet"), "--discard-earlier"],
                           capsys)
    assert code == 0 and "deleted 7 files a run with other settings wrote there" in err, err
    assert sorted(_outputs(out)) == ["preds/mine.txt", "preds/p1.json", "preds/p2.json", "vis/p1.jpg"]


def test_a_killed_run_with_other_settings_leaves_no_file_unaccounted_for(capsys, five_images, tiny_model_dir,
                                                                         tmp_path, calls):
    """Settings B over the whole folder, killed part-way, leaves settings A's files of the images it did not
    reach: a run over one image then must still find them (its journal sets A's entries aside)."""
    out = tmp_path / "out"
    assert run_cli(_args(five_images, tiny_model_dir, out), capsys)[0] == 0
    calls[:], calls.stop_at = [], 3
    assert run_cli(_args(five_images, tiny_model_dir, out, "a helmet"), capsys)[0] == 130
    calls.stop_at = None
    code, _, err = run_cli(_args(five_images / "p0.jpg", tiny_model_dir, out, "a helmet"), capsys)
    assert code == 2 and "6 files there" in err and "(changed: --texts)" in err, err  # p2, p3 and sub/p4's
    assert run_cli(_args(five_images, tiny_model_dir, out, "a helmet"), capsys)[0] == 0  # finished: all B
    code, stdout, err = run_cli(_args(five_images / "p0.jpg", tiny_model_dir, out, "a helmet"), capsys)
    assert code == 0 and "1 images (1 done by an earlier run)" in stdout, err
    assert sorted(p.name for p in out.glob("detect.journal*")) == [JOURNAL_NAME]  # the set-aside one is gone


def test_links_inside_the_outputs_never_lead_the_writes_into_the_input(capsys, five_images, tiny_model_dir, tmp_path,
                                                                       no_loading):
    """A link at an output file's name is replaced (the file is written aside and renamed over it); a link
    to a folder inside the input, on the way to the outputs, is refused before the model is loaded."""
    out = tmp_path / "out"
    (out / "vis").mkdir(parents=True)
    (out / "vis" / "sub").symlink_to(five_images / "sub", target_is_directory=True)  # vis/sub/p4.png: the input
    before = _digests(five_images)
    code, _, err = run_cli(_args(five_images, tiny_model_dir, out), capsys)
    assert code == 2 and f"{out / 'vis' / 'sub'} is a symbolic link into the input {five_images}" in err, err
    assert "remove the link" in err and _digests(five_images) == before


def test_a_link_at_an_output_files_name_is_replaced_not_written_through(capsys, five_images, tiny_model_dir,
                                                                        tmp_path):
    out = tmp_path / "out"
    for sub, name, target in [("vis", "p2.jpg", "p2.jpg"), ("preds", "p3.json", "p0.jpg")]:
        (out / sub).mkdir(parents=True, exist_ok=True)
        (out / sub / name).symlink_to(five_images / target)
    before = _digests(five_images)
    assert run_cli(_args(five_images, tiny_model_dir, out), capsys)[0] == 0
    assert _digests(five_images) == before
    assert not (out / "vis" / "p2.jpg").is_symlink() and not (out / "preds" / "p3.json").is_symlink()
    assert (out / "preds" / "p3.json").read_bytes().startswith(b"{")


def test_run_detect_refuses_a_link_into_the_input_too(five_images, tiny_detector, tmp_path):
    from reallod.errors import ConfigError
    from reallod.model.detect import DetectOptions, run_detect

    out = tmp_path / "out"
    (out / "preds").mkdir(parents=True)
    (out / "preds" / "sub").symlink_to(five_images / "sub", target_is_directory=True)
    with pytest.raises(ConfigError, match="is a symbolic link into the input"):
        run_detect(five_images, tiny_detector, ["a dog"], options=DetectOptions(out_dir=out, save_vis=False),
                   progress=False)
    assert sorted(p.name for p in (five_images / "sub").iterdir()) == ["p4.png"]


_HOLD_LOCK = """
import sys
from reallod.runs.journal import lock_journal
held = lock_journal(sys.argv[1])
print("ready", flush=True)
sys.stdin.read()
"""


def test_discard_earlier_deletes_nothing_while_another_run_writes_the_folder(capsys, five_images, tiny_model_dir,
                                                                              tmp_path):
    """The second run is refused by the journal's lock; it once deleted the files first."""
    import subprocess
    import sys

    out = tmp_path / "out"
    assert run_cli(_args(five_images, tiny_model_dir, out), capsys)[0] == 0
    before = _outputs(out)
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(out / JOURNAL_NAME)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        code, _, err = run_cli([*_args(five_images / "p1.jpg", tiny_model_dir, out, "a helmet"), "--discard-earlier"],
                               capsys)
    finally:
        proc.kill()
        proc.wait()
    assert code == 2 and f"another run (pid {proc.pid}) is writing this journal" in err, err
    assert _outputs(out) == before


def test_a_runs_own_pictures_inside_its_input_cost_no_reading_of_its_journal(tmp_path, photo, monkeypatch):
    """``cd photos && reallod detect . --out-dir .`` resumed: every picture in vis/ is at an input image's
    output name, so the journal (millions of lines on a large run, read again by the run itself) is not
    read to tell them from the user's; a picture at another name still is."""
    d = tmp_path / "photos"
    for name in ("a.jpg", "b.jpg", "vis/a.jpg", "vis/b.jpg"):
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        photo.save(d / name)
    _journal(d, "vis/a.jpg")
    read = []
    real = detect.iter_journal
    monkeypatch.setattr(detect, "iter_journal", lambda path: read.append(path) or real(path))
    assert find_images(d, d)[1] == ["a.jpg", "b.jpg"] and not read
    photo.save(d / "vis" / "old.jpg")  # not an input's name: only the journal can tell it is a picture
    with pytest.raises(ConfigError, match=r"holds 1 images no detect run wrote \(.*vis/old.jpg\)"):
        find_images(d, d)
    assert read
