"""`reallod eval ...` without a model: scoring files, the default metrics path, one-line errors."""

from __future__ import annotations

import json

import pytest

from tests.cli_helpers import run_cli
from tests.eval.synthetic import omnilabel_gt, omnilabel_predictions


def _files(tmp_path, preds=None):
    gt = omnilabel_gt(2, 6)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "preds.json").write_text(json.dumps(preds if preds is not None else omnilabel_predictions(gt, 2)))
    return tmp_path / "gt.json", tmp_path / "preds.json"


def test_scores_a_predictions_file_and_writes_metrics_beside_it(tmp_path, capsys):
    gt, preds = _files(tmp_path)
    code, out, err = run_cli(["eval", "omnilabel", "--annotations", gt, "--predictions", preds], capsys)
    assert code == 0, err
    assert "OmniLabel (×100)" in out and "AP-descr-pos" in out
    doc = json.loads((tmp_path / "preds.metrics.json").read_text())
    assert doc["benchmark"] == "omnilabel" and 0 < doc["metrics"]["AP-descr"] < 1
    assert doc["predictions"] == str(preds) and doc["details"]["num_gt"]["descr"] > 0


def test_bad_predictions_are_one_line_naming_the_entry(tmp_path, capsys):
    gt, preds = _files(tmp_path, [{"image_id": 10, "bbox": [0, 0, 5, 5], "description_ids": [1], "scores": [0.5]},
                                  {"image_id": 10, "bbox": [0, 0, 5, 5], "description_ids": [1],
                                   "scores": [float("nan")]}])
    code, _, err = run_cli(["eval", "omnilabel", "--annotations", gt, "--predictions", preds], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert f"{preds}: predictions[1] (image_id 10).scores[0]: score is nan" in err
    assert not (tmp_path / "preds.metrics.json").exists()


def test_needs_a_model_or_predictions(tmp_path, capsys):
    gt, preds = _files(tmp_path)
    code, _, err = run_cli(["eval", "omnilabel", "--annotations", gt], capsys)
    assert code == 2 and "give either --model" in err
    code, _, err = run_cli(["eval", "omnilabel", "--annotations", gt, "--model", tmp_path / "m"], capsys)
    assert code == 2 and "--model needs --images" in err
    code, _, err = run_cli(["eval", "d3", "--annotations", tmp_path / "nowhere", "--predictions", preds], capsys)
    assert code == 2 and "nowhere" in err


def test_a_missing_model_folder_fails_before_the_benchmark_is_read(tmp_path, capsys):
    import time

    gt, _ = _files(tmp_path)
    start = time.perf_counter()
    code, _, err = run_cli(["eval", "omnilabel", "--annotations", gt, "--images", tmp_path, "--model",
                            "./no/such/model"], capsys)
    assert time.perf_counter() - start < 5  # no hub look-up (that would retry for ~26 s)
    assert code == 2 and "./no/such/model: model folder not found" in err and err.strip().count("\n") == 0


@pytest.mark.parametrize("options", [["--score-over", "all-tokens"], ["--topk", "1"], ["--max-per-image", "1"],
                                     ["--topk", "100"], ["--dtype", "bf16"], ["--batch-size", "2"]])
def test_an_inference_option_goes_with_a_model(tmp_path, capsys, options):
    """Saved predictions are scored as they are: --max-per-image 1 --topk 1 left the numbers as they were,
    without a word (--score-over alone was refused). Even an option given at its default value is refused."""
    gt, preds = _files(tmp_path)
    code, _, err = run_cli(["eval", "omnilabel", "--annotations", gt, "--predictions", preds, *options], capsys)
    assert code == 2 and f"'{options[0]}'" in err and "goes with --model" in err, err
    assert not (tmp_path / "preds.metrics.json").exists()


def test_ovdevals_own_topk_goes_with_a_model_too(tmp_path, capsys):
    gt, preds = _files(tmp_path)
    code, _, err = run_cli(["eval", "ovdeval", "--annotations", gt, "--predictions", preds, "--topk", "300"], capsys)
    assert code == 2 and "'--topk'" in err and "goes with --model" in err, err


def test_several_inference_options_are_named_together(tmp_path, capsys):
    gt, preds = _files(tmp_path)
    code, _, err = run_cli(["eval", "omnilabel", "--annotations", gt, "--predictions", preds, "--max-per-image", "1",
                            "--topk", "1"], capsys)
    assert code == 2 and "'--topk' / '--max-per-image'" in err and "go with --model" in err, err


def test_run_options_with_predictions_are_refused_by_the_job_too(tmp_path):
    from reallod.errors import ConfigError
    from reallod.eval.jobs import EvalJob, run_job
    from reallod.eval.predict import RunOptions

    gt, preds = _files(tmp_path)
    with pytest.raises(ConfigError, match=r"--max-per-image.*go with --model"):
        run_job(EvalJob("omnilabel", gt, predictions=preds, run=RunOptions(max_per_image=1)))


@pytest.mark.parametrize("which", ["annotations", "predictions"])
def test_a_truncated_gzip_file_is_named_not_aborted(tmp_path, capsys, which):
    """gzip's EOFError reached click, which took it for Ctrl-D: 'Aborted.' and nothing else."""
    import gzip

    gt, preds = _files(tmp_path)
    source = gt if which == "annotations" else preds
    cut = tmp_path / f"cut_{which}.json.gz"
    cut.write_bytes(gzip.compress(source.read_bytes())[:300])
    args = {"annotations": gt, "predictions": preds, which: cut}
    code, _, err = run_cli(["eval", "omnilabel", "--annotations", args["annotations"], "--predictions",
                            args["predictions"], "--metrics-out", tmp_path / "m.json"], capsys)
    assert code == 2 and "Aborted" not in err, err
    assert f"{cut}: " in err and "not a complete gzip file" in err and err.strip().count("\n") == 0


def test_an_empty_description_stops_before_the_model_loads(tmp_path, capsys, monkeypatch, tiny_model_dir):
    """A description that is only '?' failed in the middle of the model run, naming no file or description."""
    from reallod.eval import jobs

    gt = omnilabel_gt(2, 3)
    gt["descriptions"][1]["text"] = "?"
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "images").mkdir()

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(jobs, "load_model", refuse)
    code, _, err = run_cli(["eval", "omnilabel", "--annotations", tmp_path / "gt.json", "--images", tmp_path / "images",
                            "--model", tiny_model_dir, "--device", "cpu", "--out", tmp_path / "p.json"], capsys)
    assert code == 2, err
    assert f"{tmp_path / 'gt.json'}: descriptions[1].text: '?' has no words once '.' and '?' are removed" in err
