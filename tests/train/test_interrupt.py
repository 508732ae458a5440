"""Ctrl-C in `reallod train`: it stops within seconds, exits 130 and says what is safe; the command it
prints continues the run."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from reallod.errors import Interrupted, ReallodError
from reallod.train import checkpoint as C
from reallod.train.loop import TrainInterrupted

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "train" / "tiny-cpu.yaml"


def _overrides(tmp_path: Path) -> list[str]:
    """tiny-cpu.yaml made small, with a checkpoint and a log line every step, and long enough to interrupt."""
    return [f"data.synthetic.dir={tmp_path / 'shapes'}", "data.synthetic.num_train=40", "data.synthetic.num_val=0",
            "eval.every_epochs=0", "log.every_steps=1", "checkpoint.every_steps=1", "schedule.max_steps=200"]


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    # a session of its own: Ctrl-C in a terminal reaches the whole process group (data workers too)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "reallod", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _ctrl_c(proc: subprocess.Popen, ready, timeout: float = 300) -> tuple[list[str], float]:
    """Read the output until ``ready(line)``; then SIGINT to the group. Returns the lines and when it was sent."""
    lines = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line)
        if ready(line):
            break
        assert time.monotonic() < deadline, "".join(lines[-20:])
    else:
        raise AssertionError(f"exited ({proc.wait()}) before it could be interrupted:\n{''.join(lines[-20:])}")
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    return lines, sent


def test_ctrl_c_stops_at_once_says_what_is_safe_and_resumes(tmp_path):
    work = tmp_path / "run"
    proc = _start(["train", str(CONFIG), "--work-dir", str(work), "--cfg-options", *_overrides(tmp_path)], tmp_path)
    try:
        # after the first step and its checkpoint (written right after the step's log line)
        _, sent = _ctrl_c(proc, lambda line: (line.startswith("step ") and C.latest_checkpoint(work) is not None)
                          or line.startswith("step 2 "))
        rest = proc.communicate(timeout=30)[0]
        stopped = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, rest
    assert stopped < 10, f"took {stopped:.1f} s to stop"  # a second or two, with room for a loaded machine
    assert "Traceback" not in rest
    last = rest.strip().splitlines()[-1]
    ckpt = C.latest_checkpoint(work)
    saved = C.Progress.from_json(ckpt / "state.json").step
    m = re.fullmatch(rf"interrupted at step (\d+); checkpoint at step {saved} in {re.escape(str(work))} "
                     rf"\({ckpt.name}\); `(reallod train .*)` continues from there", last)
    assert m, last
    assert int(m.group(1)) >= saved >= 1
    command = shlex.split(m.group(2))
    assert command[:6] == ["reallod", "train", str(CONFIG), "--work-dir", str(work), "--resume"]

    resumed = _start([*command[1:], f"schedule.max_steps={saved + 1}"], tmp_path)
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out
    assert f"resumed from {ckpt} (step {saved}," in out
    assert f"trained to step {saved + 1}" in out


def test_ctrl_c_before_any_checkpoint_says_nothing_is_saved(tmp_path):
    work = tmp_path / "run"
    proc = _start(["train", str(CONFIG), "--work-dir", str(work), "--cfg-options", *_overrides(tmp_path),
                   "checkpoint.every_steps=0"], tmp_path)
    try:
        _ctrl_c(proc, lambda line: line.startswith(("reallod train:", "step 1 ")))
        rest = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, rest
    last = rest.strip().splitlines()[-1]
    assert re.fullmatch(rf"interrupted (at step \d+|while setting up, before the first step); no checkpoint "
                        rf"in {re.escape(str(work))} yet, so nothing is saved; `reallod train .* --resume .*` starts "
                        "from the beginning", last), last
    assert C.latest_checkpoint(work) is None


def test_the_error_is_a_reallod_error_with_exit_code_130(tmp_path):
    e = TrainInterrupted.at(7, tmp_path, None)
    assert isinstance(e, Interrupted) and isinstance(e, ReallodError) and e.exit_code == 130
    assert str(e) == (f"interrupted at step 7; no checkpoint in {tmp_path} yet, so nothing is saved; "
                      "train(..., resume=True) starts from the beginning")
