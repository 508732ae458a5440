"""benchmarks/lod_inference.py: an unusable --device is one line and exit status 2, not a traceback;
benchmarks/detect_resume.py runs at a small size; benchmarks/detect_throughput.py writes each figure as
soon as it is measured and names the fastest parallel variant."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_lod_inference_without_cuda_is_one_line():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "lod_inference.py"), "--device", "cuda"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: device 'cuda' requested but CUDA is not available on this machine"
    assert proc.stdout == ""


def test_lod_inference_refuses_an_unknown_device():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "lod_inference.py"), "--device", "gpu0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: unknown device 'gpu0'")


def test_detect_resume_benchmark_runs_small(tmp_path):
    """The bookkeeping benchmark at a small size: a resumed run finds every image done and redoes none."""
    out = tmp_path / "figures.jsonl"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "detect_resume.py"), "--images", "30",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "resumed run: 30 images found done" in proc.stdout and "; 0 redone" in proc.stdout
    row = json.loads(out.read_text())
    assert row["images"] == 30 and row["redone"] == 0 and row["resume_peak_bytes_per_image"] > 0


@pytest.fixture
def detect_throughput(monkeypatch):
    """benchmarks/detect_throughput.py as a module (a script, not part of the package)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location("detect_throughput", ROOT / "benchmarks" / "detect_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_detect_throughput_keeps_the_figures_measured_before_it_is_stopped(detect_throughput, tmp_path,
                                                                           monkeypatch):
    """A run stopped part-way (gpu_check's time limit) keeps a line for each variant that has run over a
    slice of the images: each line is written as soon as it is measured, not all at the end."""
    import reallod.model.detect as detect
    import reallod.model.loading as loading

    timed = []

    def run_detect(folder, det, exprs, options, inference, progress):  # the job, instantly
        if folder.name != "warm":
            timed.append(folder)
            if len(timed) == 3:
                raise KeyboardInterrupt  # stopped during the third measurement
        return SimpleNamespace(processed=len(list(folder.iterdir())))

    def write_images(folder, n, size=(640, 480)):  # empty files: only their number matters here
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (folder / f"{i}.jpg").write_bytes(b"")

    monkeypatch.setattr(detect, "run_detect", run_detect)
    monkeypatch.setattr(loading, "load_detector", lambda *a, **k: SimpleNamespace(model=torch.nn.Linear(2, 2)))
    monkeypatch.setattr(detect_throughput, "model_folder", lambda kind, work: tmp_path)
    monkeypatch.setattr(detect_throughput, "write_images", write_images)
    out = tmp_path / "figures.jsonl"
    monkeypatch.setattr(sys, "argv", ["detect_throughput.py", "--images", "6", "--naive-images", "3",
                                      "--batch-sizes", "4", "--rounds", "3", "--json", str(out)])
    with pytest.raises(KeyboardInterrupt):
        detect_throughput.main()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["variant"], r["images"], r["round"], r["rounds"]) for r in rows] == [
        ("naive", 1, 1, 3), ("parallel-bs4-inline", 2, 1, 3)]


def test_the_best_parallel_variant_is_the_fastest_of_all_of_them(detect_throughput):
    rows = [{"variant": "naive", "img_expr_per_s": 1.0}, {"variant": "parallel-bs8-inline", "img_expr_per_s": 9.0},
            {"variant": "parallel-bs8", "img_expr_per_s": 8.0}, {"variant": "parallel-bs25", "img_expr_per_s": 7.0},
            {"variant": "concat", "img_expr_per_s": 20.0}]
    assert detect_throughput.best_parallel(rows)["variant"] == "parallel-bs8-inline"
