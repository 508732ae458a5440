"""A tiny random detector evaluated on tiny synthetic copies of each benchmark's format: through the CLI in
one process, then sharded over two processes (torchrun, gloo on CPU) — same predictions, same numbers —
and the saved predictions re-scored with --predictions give the same numbers again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reallod.cli import main
from tests.cli_helpers import run_cli
from tests.eval import synthetic as syn

pytest.importorskip("d_cube")
ROOT = Path(__file__).resolve().parents[2]


def _model_boxes(detector, root: Path, images: list[dict], texts_of) -> dict:
    """The tiny model's best box (xywh) per (image id, text): ground truth the random model can hit."""
    from reallod.data.images import open_image

    out = {}
    for img in images:
        texts = texts_of(img)
        dets = detector.detect(open_image(root / img["file_name"]), texts, topk=5)
        for k, t in enumerate(texts):
            d = dets.for_expression(k)
            x1, y1, x2, y2 = d.xyxy[int(np.argmax(d.scores))].tolist()
            out[img["id"], t] = [round(x1, 1), round(y1, 1), round(x2 - x1, 1), round(y2 - y1, 1)]
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers.utils import logging as hf_logging

    from reallod.eval import d3
    from reallod.model.loading import load_detector
    from reallod.model.tiny import save_tiny_detector

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    base = tmp_path_factory.mktemp("e2e")
    model = save_tiny_detector(base / "model", seed=0)
    detector = load_detector(model, device="cpu")
    data = base / "data"

    # OmniLabel: the model's best box becomes the ground truth of every other free-form description
    gt = syn.omnilabel_gt(1, n_images=4)
    syn.write_images(data / "omnilabel" / "images", gt["images"])
    texts = {d["id"]: d["text"] for d in gt["descriptions"]}
    space = {img["id"]: [d["id"] for d in gt["descriptions"] if img["id"] in d["image_ids"]] for img in gt["images"]}
    boxes = _model_boxes(detector, data / "omnilabel" / "images", gt["images"],
                         lambda img: [texts[d] for d in space[img["id"]]])
    gt["annotations"] = [{"id": k + 1, "image_id": i, "bbox": b, "description_ids": [d]}
                         for k, ((i, t), b) in enumerate(boxes.items())
                         for d in space[i][:1] + space[i][2:3] if texts[d] == t]
    (data / "omnilabel" / "gt.json").write_text(json.dumps(gt))

    # D³: pickles as the release, random boxes
    raw = syn.d3_pickles(data / "d3" / "pkl", seed=3, n_groups=2, images_per_group=2)
    syn.write_images(data / "d3" / "images", list(raw["images"].values()))
    assert len(d3.load(data / "d3" / "pkl").images) == 4

    # OVDEval: two subsets; positives get the model's box, negatives are prompted too
    for k, name in enumerate(("color", "material")):
        sub = syn.ovdeval_subset(10 + k, n_images=3)
        syn.write_images(data / "ovdeval" / "images", sub["images"])
        boxes = _model_boxes(detector, data / "ovdeval" / "images", sub["images"], lambda img: img["text"])
        ids = {c["name"]: c["id"] for c in sub["categories"]}
        sub["annotations"] = [{"id": j + 1, "image_id": i, "category_id": ids[t], "bbox": b, "area": b[2] * b[3],
                               "iscrowd": 0} for j, ((i, t), b) in enumerate(boxes.items())]
        (data / "ovdeval" / "annotations").mkdir(parents=True, exist_ok=True)
        (data / "ovdeval" / "annotations" / f"{name}.json").write_text(json.dumps(sub))
    return model, data


COMMON = ("--device", "cpu", "--batch-size", "2")


@pytest.fixture(scope="module")
def single(setup, tmp_path_factory):
    """One process, through the CLI: predictions and metrics of each benchmark."""
    model, data = setup
    out = tmp_path_factory.mktemp("single")
    runs = {
        "omnilabel": ("--annotations", data / "omnilabel" / "gt.json", "--images", data / "omnilabel" / "images",
                      "--out", out / "omnilabel.json", "--show-dir", out / "show"),
        "d3": ("--annotations", data / "d3" / "pkl", "--images", data / "d3" / "images", "--out", out / "d3.json"),
        "ovdeval": ("--annotations", data / "ovdeval" / "annotations", "--images", data / "ovdeval" / "images",
                    "--out", out / "ovdeval", "--topk", "100"),
    }
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each process of the sharded run: CPU sums depend on the thread count
    try:
        for name, args in runs.items():
            try:
                main([str(a) for a in ("eval", name, "--model", model, *COMMON, *args,
                                       "--metrics-out", out / f"{name}.metrics.json")])
            except SystemExit as e:
                assert e.code == 0, f"reallod eval {name} exited with {e.code}"
    finally:
        torch.set_num_threads(threads)
    return out


def _metrics(path: Path) -> dict:
    return json.loads(path.read_text())["metrics"]


def test_single_process_cli(single, setup):
    out = single
    m = _metrics(out / "omnilabel.metrics.json")
    assert 0 < m["AP-descr-pos"] <= 1 and m["AP-categ"] is not None
    assert (out / "show").is_dir() and len(list((out / "show").glob("*.png"))) == 4
    assert set(_metrics(out / "d3.metrics.json")) >= {"FULL/AP", "PRES/AP", "ABS/AP", "FULL/AP-short"}
    ovd = _metrics(out / "ovdeval.metrics.json")
    assert sorted(p.name for p in (out / "ovdeval").iterdir()) == ["color.json", "material.json"]
    assert ovd["color/AP"] > 0 and ovd["AP"] == pytest.approx((ovd["color/AP"] + ovd["material/AP"]) / 2)


@pytest.mark.parametrize("name", ["omnilabel", "d3", "ovdeval"])
def test_saved_predictions_score_the_same(single, setup, name, capsys):
    out = single
    _, data = setup
    gt = {"omnilabel": data / "omnilabel" / "gt.json", "d3": data / "d3" / "pkl",
          "ovdeval": data / "ovdeval" / "annotations"}[name]
    pred = out / ("ovdeval" if name == "ovdeval" else f"{name}.json")
    code, stdout, err = run_cli(["eval", name, "--annotations", gt, "--predictions", pred,
                                 "--metrics-out", out / f"{name}.rescored.json"], capsys)
    assert code == 0, err
    assert "(×100)" in stdout and "prediction rows scored" in stdout
    assert _metrics(out / f"{name}.rescored.json") == _metrics(out / f"{name}.metrics.json")


def test_two_processes_give_the_same_predictions_and_numbers(single, setup, tmp_path):
    model, data = setup
    out = single
    dist_out = tmp_path / "dist"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "eval" / "dist_driver.py"), str(model), str(data), str(dist_out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [line.split()[:2] for line in proc.stdout.split("\n") if line.strip()] == [
        ["omnilabel", "2"], ["d3", "2"], ["ovdeval", "2"]]
    for name in ("omnilabel", "d3"):
        assert (dist_out / f"{name}.json").read_bytes() == (out / f"{name}.json").read_bytes(), name
        assert _metrics(dist_out / f"{name}.metrics.json") == _metrics(out / f"{name}.metrics.json"), name
    for sub in ("color", "material"):
        assert (dist_out / "ovdeval" / f"{sub}.json").read_bytes() == (out / "ovdeval" / f"{sub}.json").read_bytes()
    assert _metrics(dist_out / "ovdeval.metrics.json") == _metrics(out / "ovdeval.metrics.json")
    assert not list(dist_out.glob("*.journal*"))  # each process kept one; rank 0 removed them all at the end


def test_score_over_all_tokens_reaches_the_detector(setup, tmp_path, capsys):
    """--score-over all-tokens: each (image, description)'s best score is the detector's under that rule."""
    from reallod.data.images import open_image
    from reallod.model.inference import InferenceOptions
    from reallod.model.loading import load_detector

    model, data = setup
    out = tmp_path / "all-tokens.json"
    code, _, err = run_cli(["eval", "omnilabel", "--model", model, *COMMON, "--annotations",
                            data / "omnilabel" / "gt.json", "--images", data / "omnilabel" / "images", "--out", out,
                            "--score-over", "all-tokens"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "all-tokens.metrics.json").read_text())["score_over"] == "all-tokens"
    gt = json.loads((data / "omnilabel" / "gt.json").read_text())
    image = gt["images"][0]
    descr = [d for d in gt["descriptions"] if image["id"] in d["image_ids"]]
    detector = load_detector(model, device="cpu")
    options = InferenceOptions(score_over="all-tokens", topk=100)
    dets = detector.detect(open_image(data / "omnilabel" / "images" / image["file_name"]),
                           [d["text"] for d in descr], options)
    best: dict[int, float] = {}
    for row in json.loads(out.read_text()):
        if row["image_id"] == image["id"]:
            for d, s in zip(row["description_ids"], row["scores"], strict=True):
                best[d] = max(best.get(d, 0.0), s)
    for k, d in enumerate(descr):
        assert best[d["id"]] == pytest.approx(float(dets.for_expression(k).scores.max()), abs=1e-3)


def test_a_run_killed_by_ctrl_c_resumes_through_the_cli(single, setup, tmp_path, capsys, monkeypatch):
    """Ctrl-C at the third image: exit 130 with what is kept; the same command again runs the rest, and
    the predictions are byte for byte those of the uninterrupted run; no journal is left."""
    import torch

    from reallod.model.inference import Detector

    model, data = setup
    out = tmp_path / "omnilabel.json"
    args = ["eval", "omnilabel", "--model", model, *COMMON, "--annotations", data / "omnilabel" / "gt.json",
            "--images", data / "omnilabel" / "images", "--out", out]
    real = Detector.detect
    calls = []

    def ctrl_c_at_the_third_image(self, *a, **k):
        calls.append(1)
        if len(calls) == 3 and stop:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(Detector, "detect", ctrl_c_at_the_third_image)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the run it is compared with
    try:
        stop = True
        code, _, err = run_cli(args, capsys)
        assert code == 130, err
        assert "interrupted: 2 of 4 images done, kept in" in err and "omnilabel.journal.jsonl" in err
        assert not out.exists() and (tmp_path / "omnilabel.journal.jsonl").is_file()
        stop, calls[:] = False, []
        code, _, err = run_cli(args, capsys)
        assert code == 0, err
    finally:
        torch.set_num_threads(threads)
    assert len(calls) == 2
    assert out.read_bytes() == (single / "omnilabel.json").read_bytes()
    assert _metrics(tmp_path / "omnilabel.metrics.json") == _metrics(single / "omnilabel.metrics.json")
    assert not list(tmp_path.glob("*.journal*")) and not list(single.glob("*.journal*"))
