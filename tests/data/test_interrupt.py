"""Ctrl-C (SIGINT to the whole process group) or SIGTERM during a parallel ``stats``/``validate``: one line,
"interrupted", exit 130. Each worker took the signal too and printed a KeyboardInterrupt traceback
(2 tracebacks, 34 lines on stderr)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

# the workers hang in their range until stopped; a marker file per worker says they are running
SCRIPT = """
import os, sys, time
import reallod.data.stats as stats
import reallod.data.validate as validate

def slow(job):
    open(os.path.join(sys.argv[2], str(os.getpid())), "w").close()
    time.sleep(60)

stats._stats_range = validate._validate_range = slow
stats.plan_ranges = validate.plan_ranges = lambda path, parts, min_bytes: [(0, 1), (1, 2), (2, 3), (3, 4)]
from reallod.cli import main
main(["data", sys.argv[3], sys.argv[1], "--workers", "2"])
"""


@pytest.mark.parametrize("command", ["stats", "validate"])
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_parallel_run_prints_one_line(tmp_path, command, how):
    data = tmp_path / "in.jsonl"
    data.write_text('{"filename": "a.jpg", "height": 1, "width": 1, "pairs": {}}\n')
    markers = tmp_path / "workers"
    markers.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(data), str(markers), command],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while len(os.listdir(markers)) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert len(os.listdir(markers)) == 2, proc.stderr.read().decode() if proc.poll() is not None else "no workers"
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends the foreground group
        else:
            proc.send_signal(signal.SIGTERM)  # a scheduler stopping the job
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = err.decode()
    assert proc.returncode == 130 and text.strip() == "interrupted", text


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_workers_of_a_parent_killed_with_sigkill_end_with_it(tmp_path):
    """A parent killed with kill -9 cannot stop its pool: its workers went on with their ranges and
    printed broken-pipe tracebacks when they were done."""
    data = tmp_path / "in.jsonl"
    data.write_text('{"filename": "a.jpg", "height": 1, "width": 1, "pairs": {}}\n')
    markers = tmp_path / "workers"
    markers.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(data), str(markers), "validate"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while len(os.listdir(markers)) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        workers = [int(name) for name in os.listdir(markers)]
        assert len(workers) == 2
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(_alive, workers))
    finally:
        with contextlib.suppress(ProcessLookupError):  # nothing left of the group: the point
            os.killpg(proc.pid, signal.SIGKILL)
