"""One run at a time writes a journal: a second one (another process, or a second open in this one) is
refused at once, before it reads, cuts or drops anything; the lock goes with its holder, ``kill -9``
included."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from reallod.runs.journal import (
    Journal,
    JournalBusy,
    JournalMismatch,
    lock_journal,
    lock_path_for,
    read_journal,
)

FP = {"config": "abc", "input": "def"}

HOLD = """
import sys
import orjson
from reallod.runs.journal import Journal
j = Journal.open(sys.argv[1], orjson.loads(sys.argv[2]))
for tid, result in orjson.loads(sys.argv[3]):
    j.append_sync(tid, result)
print("ready", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def held(path: Path, fp: dict[str, Any], results: list[tuple[str, Any]] = ()) -> Iterator[subprocess.Popen]:
    """Another process with the journal ``path`` open (``fp``, holding ``results``), appending as a run
    does; killed (-9) on leaving. For the callers that look at a journal before opening it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), orjson.dumps(fp), orjson.dumps(list(results))],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def busy(proc: subprocess.Popen) -> str:
    """What :class:`JournalBusy` says of the run ``proc`` (a pattern)."""
    return (rf"another run \(pid {proc.pid}\) is writing this journal; wait for it to finish, or give this run "
            "another output")


@pytest.fixture
def holder(tmp_path):
    path = tmp_path / "o.journal.jsonl"
    with held(path, FP, [("held", {"verdict": "failed"})]) as proc:
        yield path, proc


def test_a_second_run_on_a_journal_in_use_is_refused_at_once_naming_the_first(holder):
    path, proc = holder
    before = path.read_bytes()
    for opening in (lambda: Journal.open(path, FP, retry=lambda r: r["verdict"] == "failed"),  # would drop "held"
                    lambda: Journal.rewrite(path, FP, [("other", {"v": 1})])):
        with pytest.raises(JournalBusy, match=rf"o\.journal\.jsonl: another run \(pid {proc.pid}\) is writing "
                                              r"this journal; wait for it to finish, or give this run another"):
            opening()
        assert path.read_bytes() == before  # nothing read, cut, dropped or replaced


def test_the_lock_of_a_killed_run_is_no_obstacle(holder):
    path, proc = holder
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert lock_path_for(path).exists()  # left behind by kill -9, but the kernel released its lock
    with Journal.open(path, FP, retry=lambda r: r["verdict"] == "failed") as j:
        assert j.retried == 1 and read_journal(path)[1] == {}
        j.append_sync("t1", {"verdict": "correct"})
    assert not lock_path_for(path).exists()
    assert list(read_journal(path)[1]) == ["t1"]


def test_two_opens_in_one_process_conflict_and_closing_releases(tmp_path):
    """A lock belongs to an open file: a second open in the same process is refused too (the tests that
    reopen a journal close it first), with words that say so."""
    path = tmp_path / "j.jsonl"
    j = Journal.open(path, FP)
    with pytest.raises(JournalBusy, match=rf"this process \(pid {os.getpid()}\) has this journal open already"):
        Journal.open(path, FP)
    j.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j.jsonl"]
    with Journal.open(path, FP) as again:
        assert again.done == {}
    with Journal.rewrite(path, FP, [("t1", {"v": 1})]) as rewritten, pytest.raises(JournalBusy):
        Journal.open(path, FP)
    assert rewritten.done == {"t1": {"v": 1}}
    Journal.open(path, FP).close()  # the rewrite's lock is released by its close too


def test_a_lock_taken_first_is_held_by_the_journal_it_is_handed_to(tmp_path):
    """A caller that looks at (or replaces) a journal before opening it takes its lock first and hands it
    over: held from before the look until the journal's close, released if the open fails."""
    path = tmp_path / "j.jsonl"
    for opening in (lambda lock: Journal.open(path, FP, lock=lock),
                    lambda lock: Journal.rewrite(path, FP, [("t1", {"v": 1})], lock=lock)):
        with opening(lock_journal(path)), pytest.raises(JournalBusy, match="open already"):
            lock_journal(path)
        lock_journal(path).release()
    with pytest.raises(JournalMismatch):
        Journal.open(path, {"config": "other", "input": "def"}, lock=lock_journal(path))
    Journal.open(path, FP).close()  # released by the failed open


FORK_AND_DIE = """
import os, signal, sys, time
from reallod.runs.journal import lock_journal
lock = lock_journal(sys.argv[1])
if os.fork() == 0:  # a worker (a DataLoader's, forked): it outlives its parent for a while
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)  # not the test's pipe: the test reads on as soon as the run is dead
    os.dup2(null, 2)
    time.sleep(10)
    os._exit(0)
print("ready", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_run_killed_outright_leaves_no_lock_in_the_workers_it_forked(tmp_path):
    """DataLoader workers held a copy of the run's lock descriptor: after `kill -9` of the run, its rerun
    was refused for seconds, naming the dead process."""
    journal = tmp_path / "out.journal.jsonl"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    done = subprocess.run([sys.executable, "-c", FORK_AND_DIE, str(journal)], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == -signal.SIGKILL and "ready" in done.stdout, done.stderr
    lock = lock_journal(journal)  # the worker still sleeps: the lock is free all the same
    lock.release()
