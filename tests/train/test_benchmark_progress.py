"""benchmarks/train_step.py tells what it is doing while it runs (to stderr), not only at the end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_train_step_prints_progress_per_case_and_step():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--case", "tiny-cpu",
                           "--steps", "1", "--warmup", "1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    progress = [line for line in proc.stderr.splitlines() if line.startswith("train_step: ")]
    assert progress[0] == "train_step: case 1/1: tiny-cpu (its own process)"
    assert "train_step: tiny-cpu: training 1 warm-up + 1 measured steps" in progress
    assert any(line.startswith("train_step: tiny-cpu: step 1/2 (warm-up) loss=") for line in progress), progress
    assert any(line.startswith("train_step: tiny-cpu: step 2/2 loss=") for line in progress), progress
    assert proc.stdout.splitlines()[-1].startswith("tiny-cpu ")  # the table still goes to stdout
