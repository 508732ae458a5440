"""`reallod eval` output paths: checked before the benchmark is read or a model loaded (a file where a file goes,
a folder where a folder goes, never over an input), the metrics beside the predictions, the journal kept until
the metrics are written."""

from __future__ import annotations

import json
import os

import pytest

from reallod.eval import jobs
from tests.cli_helpers import run_cli
from tests.eval.synthetic import omnilabel_gt, omnilabel_predictions, ovdeval_subset, write_images

COMMON = ("--device", "cpu", "--batch-size", "2")




@pytest.fixture
def omni(tmp_path):
    gt = omnilabel_gt(2, 3)
    write_images(tmp_path / "images", gt["images"])
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "preds.json").write_text(json.dumps(omnilabel_predictions(gt, 2)))
    return tmp_path


@pytest.fixture
def ovd(tmp_path):
    """Two OVDEval subsets (color, material), two images each."""
    for k, name in enumerate(("color", "material")):
        sub = ovdeval_subset(10 + k, n_images=2)
        write_images(tmp_path / "images", sub["images"])
        (tmp_path / "ann").mkdir(exist_ok=True)
        (tmp_path / "ann" / f"{name}.json").write_text(json.dumps(sub))
    return tmp_path


def _model_run(benchmark, root, model, out, *extra):
    annotations = root / ("gt.json" if benchmark == "omnilabel" else "ann")
    return ["eval", benchmark, "--model", model, *COMMON, "--annotations", annotations, "--images",
            root / "images", "--out", out, *extra]


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if "images" not in p.parts)


@pytest.mark.parametrize(("out", "said"), [
    ("olout", "--out olout: a name without .json, but the omnilabel predictions are one JSON file: give a file "
              "name ending in .json (or .json.gz, written compressed), such as olout.json"),
    ("made", "--out made: a folder, but the omnilabel predictions are one JSON file"),
])
def test_a_single_file_out_must_be_a_json_name(omni, tiny_model_dir, no_model, capsys, monkeypatch, out, said):
    monkeypatch.chdir(omni)
    (omni / "made").mkdir()
    before = _files(omni)
    code, _, err = run_cli(_model_run("omnilabel", omni, tiny_model_dir, out), capsys)
    assert code == 2 and said in err and err.strip().count("\n") == 0, err
    assert _files(omni) == before


def test_ovdeval_writes_a_folder_of_subsets_and_refuses_a_file_there(ovd, tiny_model_dir, no_model, capsys):
    (ovd / "afile").write_text("x")
    code, _, err = run_cli(_model_run("ovdeval", ovd, tiny_model_dir, ovd / "afile"), capsys)
    assert code == 2 and "afile: a file, where a folder is written" in err, err
    code, _, err = run_cli(_model_run("ovdeval", ovd, tiny_model_dir, ovd / "preds.json"), capsys)
    assert code == 2 and "2 subsets are evaluated, one <subset>.json each: give a folder" in err, err
    assert (ovd / "afile").read_text() == "x" and not (ovd / "preds.json").exists()


def test_ovdeval_folder_out_with_one_subset_or_several(ovd, tiny_model_dir, capsys):
    """A folder --out gets <subset>.json whatever the number of subsets; the metrics go beside it."""
    code, _, err = run_cli(_model_run("ovdeval", ovd, tiny_model_dir, ovd / "all"), capsys)
    assert code == 0, err
    assert sorted(p.name for p in (ovd / "all").iterdir()) == ["color.json", "material.json"]
    assert json.loads((ovd / "all.metrics.json").read_text())["benchmark"] == "ovdeval"
    code, _, err = run_cli(_model_run("ovdeval", ovd, tiny_model_dir, ovd / "one", "--subset", "color"), capsys)
    assert code == 0, err
    assert [p.name for p in (ovd / "one").iterdir()] == ["color.json"] and (ovd / "one.metrics.json").is_file()
    code, _, err = run_cli(["eval", "ovdeval", "--annotations", ovd / "ann", "--predictions", ovd / "one",
                            "--subset", "color", "--metrics-out", ovd / "again.json"], capsys)
    assert code == 0, err
    assert json.loads((ovd / "again.json").read_text())["metrics"] == \
        json.loads((ovd / "one.metrics.json").read_text())["metrics"]


def test_predictions_without_a_suffix_get_their_metrics_beside(omni, capsys):
    (omni / "preds.json").rename(omni / "nosuffix")
    code, out, err = run_cli(["eval", "omnilabel", "--annotations", omni / "gt.json", "--predictions",
                              omni / "nosuffix"], capsys)
    assert code == 0, err
    assert (omni / "nosuffix.metrics.json").is_file() and f"metrics: {omni / 'nosuffix.metrics.json'}" in out


def _links(root):
    os.symlink(root / "gt.json", root / "soft.json")
    os.link(root / "gt.json", root / "hard.json")


@pytest.mark.parametrize(("args", "said"), [
    (("--out", "gt.json"), "--out gt.json: is --annotations gt.json, an input; writing there would overwrite it"),
    (("--out", "soft.json"), "--out soft.json: is --annotations gt.json"),
    (("--out", "p.json", "--metrics-out", "hard.json"), "--metrics-out hard.json: is --annotations gt.json"),
    (("--out", "p.json", "--metrics-out", "p.json"), "--metrics-out p.json: also --out p.json"),
    (("--out", "p.json", "--metrics-out", "p.journal.jsonl"), "also --out's journal p.journal.jsonl"),
])
def test_a_model_run_never_writes_over_its_inputs(omni, tiny_model_dir, no_model, capsys, monkeypatch, args, said):
    monkeypatch.chdir(omni)
    _links(omni)
    gt = (omni / "gt.json").read_bytes()
    code, _, err = run_cli(["eval", "omnilabel", "--model", tiny_model_dir, *COMMON, "--annotations", "gt.json",
                            "--images", "images", *args], capsys)
    assert code == 2 and said in err, err
    assert (omni / "gt.json").read_bytes() == gt and not (omni / "p.json").exists()


@pytest.mark.parametrize(("args", "said"), [
    (("--metrics-out", "preds.json"), "--metrics-out preds.json: is --predictions preds.json"),
    (("--metrics-out", "gt.json"), "--metrics-out gt.json: is --annotations gt.json"),
    (("--metrics-out", "soft.json"), "--metrics-out soft.json: is --annotations gt.json"),
    (("--metrics-out", "made"), "--metrics-out made: a folder, where a file is written"),
])
def test_scoring_never_writes_over_its_inputs(omni, capsys, monkeypatch, args, said):
    monkeypatch.chdir(omni)
    _links(omni)
    (omni / "made").mkdir()
    before = {p: (omni / p).read_bytes() for p in ("gt.json", "preds.json")}
    code, _, err = run_cli(["eval", "omnilabel", "--annotations", "gt.json", "--predictions", "preds.json", *args],
                           capsys)
    assert code == 2 and said in err, err
    assert {p: (omni / p).read_bytes() for p in before} == before


def test_nothing_is_written_into_an_annotations_folder(ovd, tiny_model_dir, no_model, capsys):
    """OVDEval reads every *.json of its annotations folder: predictions or metrics there would become subsets."""
    before = _files(ovd)
    code, _, err = run_cli(_model_run("ovdeval", ovd, tiny_model_dir, ovd / "ann"), capsys)
    assert code == 2 and f"--out {ovd / 'ann' / 'color.json'}: is inside --annotations {ovd / 'ann'}" in err, err
    code, _, err = run_cli(_model_run("ovdeval", ovd, tiny_model_dir, ovd / "p", "--metrics-out",
                                      ovd / "ann" / "m.json"), capsys)
    assert code == 2 and "--metrics-out" in err and "is inside --annotations" in err, err
    assert _files(ovd) == before


def test_the_journal_is_kept_until_the_metrics_are_written(omni, tiny_model_dir, capsys, monkeypatch):
    """A run that fails after the model ran (here: writing the metrics) keeps its journal: the rerun resumes."""

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    real = jobs._finish
    monkeypatch.setattr(jobs, "_finish", disk_full)
    args = _model_run("omnilabel", omni, tiny_model_dir, omni / "p.json")
    code, _, err = run_cli(args, capsys)
    assert code != 0 and "No space left on device" in err and (omni / "p.journal.jsonl").is_file(), err
    monkeypatch.setattr(jobs, "_finish", real)
    monkeypatch.setattr(jobs, "load_model", lambda spec, dist: None)  # every image is in the journal
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert (omni / "p.metrics.json").is_file() and not (omni / "p.journal.jsonl").exists()


def test_a_show_dir_that_is_a_file_is_refused_first(omni, tiny_model_dir, no_model, capsys):
    (omni / "pictures").write_text("x")
    code, _, err = run_cli(_model_run("omnilabel", omni, tiny_model_dir, omni / "p.json", "--show-dir",
                                      omni / "pictures"), capsys)
    assert code == 2 and f"--show-dir {omni / 'pictures'}: a file, where a folder is written" in err, err
    assert (omni / "pictures").read_text() == "x"


def _images_named_like_pictures(root, gt, folder=""):
    """The ground truth's images stored as ``<folder>/<image id>.png``: the names --show-dir draws."""
    for img in gt["images"]:
        img["file_name"] = f"{folder}{img['id']}.png"
    write_images(root / "images", gt["images"])
    (root / "gt.json").write_text(json.dumps(gt))
    return {p: p.read_bytes() for p in (root / "images").rglob("*.png")}


@pytest.mark.parametrize(("folder", "show", "said"), [
    ("", "images", "--show-dir {images}: is --images {images}; the pictures (<image id>.png) would be written "
                   "among the benchmark's images, over any named like one: give a folder outside it"),
    ("", "link", "--show-dir {root}/link: is --images {images}"),
    ("sub/", "images/sub", "--show-dir {images}/sub: the picture of image 10 (10.png) would be written over the "
                           "input image {images}/sub/10.png: give a --show-dir outside the folders of the images"),
    ("sub/", "link/sub", "--show-dir {root}/link/sub: the picture of image 10 (10.png) would be written over"),
])
def test_a_show_dir_never_draws_over_the_images(omni, tiny_model_dir, no_model, capsys, folder, show, said):
    """Pictures are <image id>.png: drawn into the image root, or into a folder of it holding images named so,
    they replaced the benchmark's own images. Refused before the model loads; nothing is written."""
    for p in (omni / "images").iterdir():
        p.unlink()
    before = _images_named_like_pictures(omni, omnilabel_gt(2, 3), folder)
    os.symlink(omni / "images", omni / "link")
    outputs = _files(omni)
    code, _, err = run_cli(_model_run("omnilabel", omni, tiny_model_dir, omni / "p.json", "--show-dir",
                                      omni / show), capsys)
    assert code == 2 and said.format(root=omni, images=omni / "images") in err, err
    assert {p: p.read_bytes() for p in (omni / "images").rglob("*.png")} == before
    assert _files(omni) == outputs  # no journal, no metrics


def test_a_show_dir_beside_or_around_the_images_draws(omni, tiny_model_dir, capsys):
    """A --show-dir holding the image root, or inside it with no image named like a picture, is fine."""
    for p in (omni / "images").iterdir():
        p.unlink()
    before = _images_named_like_pictures(omni, omnilabel_gt(2, 3), "sub/")
    code, _, err = run_cli(_model_run("omnilabel", omni, tiny_model_dir, omni / "p.json", "--show-dir", omni),
                           capsys)
    assert code == 0, err
    code, _, err = run_cli(_model_run("omnilabel", omni, tiny_model_dir, omni / "q.json", "--show-dir",
                                      omni / "images" / "drawn"), capsys)
    assert code == 0, err
    assert sorted(p.name for p in (omni / "images" / "drawn").iterdir()) == ["10.png", "13.png", "16.png"]
    assert {p: p.read_bytes() for p in (omni / "images").rglob("*.png") if "drawn" not in p.parts} == before


def test_a_model_giving_a_nan_score_is_stopped_and_the_images_done_kept(omni, tiny_model_dir, capsys, monkeypatch):
    """A NaN score was scored silently (ranked anywhere) and written as null; now the run stops naming the image,
    writes no predictions or metrics, and keeps the images done before it: the rerun goes on from there."""
    import numpy as np

    from reallod.model.inference import Detector
    from reallod.runs.journal import iter_journal

    real, calls = Detector.detect, []

    def nan_on_the_second_image(self, *args, **kwargs):
        dets = real(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            dets.scores[0] = np.nan
        return dets

    monkeypatch.setattr(Detector, "detect", nan_on_the_second_image)
    args = _model_run("omnilabel", omni, tiny_model_dir, omni / "p.json")
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "img_1.png: the model gave 1 of its" in err and "not a finite number" in err, err
    assert not (omni / "p.json").exists() and not (omni / "p.metrics.json").exists()
    assert [task for task, _ in iter_journal(omni / "p.journal.jsonl")] == ["0"]
    monkeypatch.setattr(Detector, "detect", real)
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert all(None not in p["scores"] for p in json.loads((omni / "p.json").read_text()))
