"""benchmarks/lod_inference.py: an unusable --device is one line and exit status 2, not a traceback;
benchmarks/detect_resume.py runs at a small size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
