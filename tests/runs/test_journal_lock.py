"""One run at a time writes a journal: a second one (another process, or a second open in this one) is
refused at once, before it reads, cuts or drops anything; the lock goes with its holder, ``kill -9``
included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from reallod.runs.journal import Journal, JournalBusy, lock_path_for, read_journal

FP = {"config": "abc", "input": "def"}

HOLD = """
import sys
from reallod.runs.journal import Journal
j = Journal.open(sys.argv[1], {"config": "abc", "input": "def"})
j.append_sync("held", {"verdict": "failed"})
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def holder(tmp_path):
    """Another process with the journal open, appending as a run does; killed (-9) at the end."""
    path = tmp_path / "o.journal.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield path, proc
    finally:
        proc.kill()
        proc.wait()


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
