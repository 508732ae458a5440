"""benchmarks/train_step.py tells what it is doing while it runs (to stderr), not only at the end; its
--json line of a case is written as soon as the case has run; --warmup 0 means none."""

from __future__ import annotations

import json
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


def test_train_step_without_warm_up_writes_the_case_line(tmp_path):
    """--warmup 0 measures from the first step (it became the default 2); --json appends the case's line
    (what gpu_check's report keeps if the run is stopped later)."""
    out = tmp_path / "report.jsonl"
    out.write_text('{"stage": "env"}\n')
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--case", "tiny-cpu",
                           "--steps", "1", "--warmup", "0", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train_step: tiny-cpu: training 0 warm-up + 1 measured steps" in proc.stderr.splitlines()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0] == {"stage": "env"} and len(rows) == 2
    assert rows[1]["stage"] == "train" and rows[1]["case"] == "tiny-cpu" and rows[1]["steps"] == 1
    assert rows[1]["device_name"].startswith("CPU")


def test_train_step_refuses_no_measured_step():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--steps", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--steps 0: at least 1 measured step is needed" in proc.stderr
