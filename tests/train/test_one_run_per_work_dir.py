"""One run at a time trains in a work dir: a second one (a job started twice, a rerun while the workers of a
killed ``torchrun`` go on) is refused at once naming the pid of the run there, and writes nothing. Both used
to train into it together, interleaving ``log.csv`` and checkpoints, moving each other's checkpoints and
``best/`` aside, or calling a checkpoint the other was writing damaged."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from reallod.runs.journal import JournalBusy
from reallod.train import checkpoint as C
from reallod.train.loop import train
from tests.cli_helpers import run_cli

from .helpers import quiet, tiny_config, tiny_raw, write_yaml

HOLDER = """
import sys, time
from pathlib import Path
from reallod.train.checkpoint import lock_work_dir
lock = lock_work_dir(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(600)
"""
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _busy(work_dir: Path, pid: int) -> str:
    return (rf"^{work_dir} is being trained by another run \(pid {pid}\): wait for it to end, or use another "
            r"--work-dir$")


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of ``tmp_path / "run"`` (as a training run there does)."""
    run = tmp_path / "run"
    run.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_second_run_is_refused_naming_the_pid_and_a_killed_holder_leaves_no_refusal(tmp_path, shapes, holder):
    run = tmp_path / "run"
    cfg = tiny_config(shapes, ["schedule.max_steps=1"])
    with pytest.raises(JournalBusy, match=_busy(run, holder.pid)):
        train(cfg, run, resume=True, echo=quiet)
    with pytest.raises(JournalBusy, match=_busy(run, holder.pid)):  # before the check for a forgotten --resume
        train(cfg, run, echo=quiet)
    assert sorted(p.name for p in run.iterdir()) == ["train.lock"]  # nothing read, moved or written
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    said: list[str] = []
    result = train(cfg, run, resume=True, echo=said.append)  # its lock file is left, its lock is not
    assert result.step == 1 and any("starting from the beginning" in m for m in said)
    assert not (run / "train.lock").exists()


def test_a_run_is_refused_while_another_trains_there_and_the_lock_ends_with_the_run(tmp_path, shapes):
    """The second run starts when the first has logged its setup (in the same process: the lock is the
    kernel's on an open file, so two opens conflict as two processes' do)."""
    run = tmp_path / "run"
    cfg = tiny_config(shapes, ["schedule.max_steps=1"])
    refused: list[BaseException] = []

    def echo(line: str) -> None:
        if line.startswith("reallod train:") and not refused:
            try:
                train(cfg, run, resume=True, echo=quiet)
            except JournalBusy as e:
                refused.append(e)

    assert train(cfg, run, resume=True, echo=echo).step == 1
    assert [str(e) for e in refused] == [
        f"{run} is being trained by another run (pid {os.getpid()}): wait for it to end, or use another --work-dir"]
    assert not (run / "train.lock").exists()
    said: list[str] = []
    result = train(tiny_config(shapes, ["schedule.max_steps=2"]), run, resume=True, echo=said.append)
    assert result.step == 2
    assert any(m.startswith(f"resumed from {run / 'checkpoints' / C.checkpoint_name(1)} (step 1,") for m in said)
    assert not (run / "train.lock").exists()


def test_the_command_refused_exits_with_status_2_in_one_line(tmp_path, shapes, holder, capsys):
    config = write_yaml(tmp_path / "tiny.yaml", tiny_raw(shapes, schedule={"max_steps": 1}))
    code, _, err = run_cli(["train", config, "--work-dir", tmp_path / "run", "--resume"], capsys)
    assert code == 2
    assert err == (f"error: {tmp_path / 'run'} is being trained by another run (pid {holder.pid}): wait for it "
                   "to end, or use another --work-dir\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this Python")
def test_every_process_of_a_refused_distributed_run_stops_at_once(tmp_path, holder):
    """The main process is refused; the other learns it at the synchronisation before the resume
    decision and stops too, rather than waiting there (or reading the work dir)."""
    raw = tiny_raw(tmp_path / "shapes", schedule={"epochs": 1, "max_steps": 1},
                   train={"cpu": True, "threads": 1, "batch_size": 2})
    config = write_yaml(tmp_path / "tiny.yaml", raw)
    proc = subprocess.run(
        [str(TORCHRUN), "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
         "--monitor-interval", "5",  # torchrun ends the other process once one failed: let it say why first
         "-m", "reallod", "train", str(config), "--work-dir", str(tmp_path / "run"), "--resume"],
        cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "terminate called" not in out and "exitcode: -6" not in out, out  # gloo's teardown aborted the main one
    assert (f"error: {tmp_path / 'run'} is being trained by another run (pid {holder.pid}): wait for it to end, "
            "or use another --work-dir") in out
    assert "error: opening the work dir" in out and "failed in 1 other process(es) of this run" in out
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["train.lock"]
