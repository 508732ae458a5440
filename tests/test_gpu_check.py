"""``benchmarks/gpu_check.sh --device cpu``: the CPU form of the GPU check, as CI runs it. Every stage
must write its figures to the one report file (JSON lines), and none may fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_form_writes_every_stage(tmp_path):
    out = tmp_path / "check.jsonl"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert not [r for r in rows if "error" in r], [r for r in rows if "error" in r]
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["stage"], []).append(r)

    env = by["env"][0]
    assert env["packages"]["torch"] and env["packages"]["transformers"] and env["device_name"]
    assert "torch" in proc.stdout and "transformers" in proc.stdout  # the versions are printed too
    assert by["cuda-tests"][0]["skipped"] >= 5  # marked tests collected, skipped without a device
    lod = {r["dtype"]: r for r in by["lod-inference"]}
    assert set(lod) == {"fp32", "bf16", "fp16"}
    assert all(r["parallel_img_expr_per_s"] > 0 and r["naive_img_expr_per_s"] > 0 for r in lod.values())
    assert lod["fp32"]["reuse_bs1_bit_identical"] is True
    variants = {r["variant"] for r in by["detect"]}
    assert {"naive", "parallel-bs4-inline", "parallel-bs4", "concat"} <= variants
    assert all(r["img_expr_per_s"] > 0 and r["images"] > 0 for r in by["detect"])
    assert by["detect-summary"][0]["parallel_vs_naive"] > 0
    cli = by["detect-cli"][0]
    assert cli["pred_files"] == cli["images"]
    train = by["train"][0]
    assert train["case"] == "tiny-cpu" and train["images_per_s"] > 0 and train["peak_mem_mb"] > 0
    assert by["eval"][0]["images_per_s"] > 0 and by["eval"][0]["AP-descr"] is not None
    done = by["done"][0]
    assert done["failed"] == [] and set(done["stage_seconds"]) == {"cuda-tests", "lod-inference", "detect",
                                                                   "detect-cli", "train", "eval"}
