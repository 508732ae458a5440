"""`reallod eval` refuses an output under a file before the benchmark is read, a path that steps out of a
file with ``..`` included (the OS does not step out: ``afile/../m.json`` cannot be written)."""

from __future__ import annotations

import json
from pathlib import Path

from reallod.eval import jobs
from tests.cli_helpers import run_cli
from tests.eval.synthetic import omnilabel_gt, omnilabel_predictions


def test_a_metrics_out_through_a_file_is_refused_before_scoring(tmp_path, capsys, monkeypatch):
    """Its folder was judged with the ``..`` taken away: the scoring ran, and writing the metrics failed."""
    gt = omnilabel_gt(2, 3)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "preds.json").write_text(json.dumps(omnilabel_predictions(gt, 2)))
    (tmp_path / "afile").write_text("x")

    def refuse(job):
        raise AssertionError("the benchmark was read before the outputs were checked")

    monkeypatch.setattr(jobs, "_open_benchmark", refuse)
    metrics = tmp_path / "afile" / ".." / "m.json"
    code, _, err = run_cli(["eval", "omnilabel", "--annotations", tmp_path / "gt.json", "--predictions",
                            tmp_path / "preds.json", "--metrics-out", metrics], capsys)
    assert code == 2 and f"--metrics-out {metrics}: {tmp_path / 'afile'} is a file, not a folder" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "gt.json", "preds.json"]


def test_a_model_run_refuses_a_pipe_or_a_device_as_its_out(tmp_path, capsys, tiny_model_dir):
    """Its journal would be made beside it, in /dev; --metrics-out /dev/stdout is written through."""
    gt = omnilabel_gt(2, 3)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "images").mkdir()
    code, _, err = run_cli(["eval", "omnilabel", "--annotations", tmp_path / "gt.json", "--images",
                            tmp_path / "images", "--model", tiny_model_dir, "--out", "/dev/stdout"], capsys)
    assert code == 2 and "--out /dev/stdout is a pipe or a device: a run keeps its journal beside its output" in err
    assert not list(Path("/dev").glob("stdout.*"))
