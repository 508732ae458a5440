"""benchmarks/lod_inference.py: an unusable --device is one line and exit status 2, not a traceback."""

from __future__ import annotations

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
