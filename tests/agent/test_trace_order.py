"""A task's trace line (with its prompts) is written before its journal entry: a kill between the two
never leaves a journaled task whose trace steps are lost; and a trace's bad last line is a torn write
only when no newline ends it, otherwise it is damage, reported like a bad line in the middle."""

from __future__ import annotations

import gzip
import signal
import subprocess
import sys

import pytest

from reallod.agent.realign import RealignOptions, realign
from reallod.agent.trace import read_trace, trace_path_for
from reallod.errors import DataError
from reallod.runs.journal import read_journal
from tests.agent.io_helpers import EXAMPLES, REPO
from tests.agent.scripted import colour_judge, scripted_roles

KILLED_RUN = """
import os, signal, sys
from pathlib import Path
from reallod.agent.realign import RealignOptions, realign
from reallod.runs.journal import Journal
from tests.agent.scripted import colour_judge, scripted_roles

out, kill_at, when = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
write, calls = Journal._locked_write, [0]

def locked_write(self, data):
    calls[0] += 1
    if calls[0] == kill_at and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    write(self, data)
    if calls[0] == kill_at and when == "after":  # the entry is durable, nothing after it ran
        os.kill(os.getpid(), signal.SIGKILL)

Journal._locked_write = locked_write
realign(RealignOptions(input=Path(sys.argv[4]), config="scripted", out=out, images=Path(sys.argv[5]),
                       concurrency=1, cache=out.with_name("cache.sqlite")),  # never the user's cache
        roles=scripted_roles(colour_judge, vlm=False))
"""


def run(out, **kw):
    opts = RealignOptions(input=EXAMPLES / "realdata.jsonl", config="scripted", out=out,
                          images=EXAMPLES / "images", concurrency=1, cache=out.with_name("cache.sqlite"), **kw)
    return realign(opts, roles=scripted_roles(colour_judge, vlm=False))


@pytest.mark.parametrize("name", ["o.jsonl", "o.jsonl.gz"])  # a .gz output's trace is gzip: a kill leaves
@pytest.mark.parametrize("when", ["after", "before"])        # its member unfinished
def test_a_kill_around_the_journal_write_keeps_every_journaled_tasks_full_trace(tmp_path, when, name):
    out = tmp_path / name
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, str(out), "4", when, str(EXAMPLES / "realdata.jsonl"),
                           str(EXAMPLES / "images")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    _, killed = read_journal(tmp_path / "o.journal.jsonl")
    assert len(killed) == (4 if when == "after" else 3)  # one task per write at concurrency 1
    done = run(out)
    _, journal = read_journal(tmp_path / "o.journal.jsonl")
    entries = list(read_trace(trace_path_for(out))[1])
    assert trace_path_for(out).name == name.replace(".jsonl", ".trace.jsonl")
    ids = [e["task_id"] for e in entries]
    assert len(ids) == len(set(ids)) == len(journal) == done.summary.tasks  # every task once
    assert set(ids) == set(journal)
    for entry in entries:  # the full entry, with the prompts the fine-tuning data needs
        assert not entry.get("recovered") and isinstance(entry["task"], dict), entry["task_id"]
        assert entry["result"]["steps"] and all(step["messages"] for step in entry["result"]["steps"])


def trace_with_last_line(tmp_path, last: bytes, *, gz: bool = False):
    out = tmp_path / "o.jsonl"
    run(out, limit=3)
    data = (tmp_path / "o.trace.jsonl").read_bytes() + last
    path = tmp_path / ("t.trace.jsonl.gz" if gz else "t.trace.jsonl")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


BAD = b'{"task_id":"9","result":{"expression":"caf\xe9"}}'  # a whole line, but Latin-1: not UTF-8 JSON


@pytest.mark.parametrize("gz", [False, True])
def test_a_bad_last_line_ended_by_a_newline_is_damage_not_a_torn_write(tmp_path, gz):
    path = trace_with_last_line(tmp_path, BAD + b"\n", gz=gz)
    with pytest.raises(DataError, match="invalid JSON in the trace: the file is damaged") as err:
        list(read_trace(path)[1])
    assert err.value.line == 5 and err.value.path == str(path)


def test_a_bad_last_line_without_a_newline_is_a_torn_write_and_skipped(tmp_path):
    path = trace_with_last_line(tmp_path, BAD[:30])
    assert len(list(read_trace(path)[1])) == 3


def test_a_bad_line_in_the_middle_is_reported_the_same_way(tmp_path):
    path = trace_with_last_line(tmp_path, BAD + b"\n" + b'{"task_id":"10"}\n')
    with pytest.raises(DataError, match="invalid JSON in the trace: the file is damaged") as err:
        list(read_trace(path)[1])
    assert err.value.line == 5


@pytest.mark.parametrize("line, says", [
    (b'[1, 2, 3]\n', r"a JSON array \(\[1,2,3\]\), not a task entry: the trace is damaged or was edited"),
    (b'{"result": {}}\n', "an object without a task_id, not a task entry"),
    (b'{"trace": 2, "images": "/elsewhere"}\n', "a second trace header: two traces were joined into one file"),
])
def test_a_whole_line_that_is_no_task_entry_is_named_not_skipped(tmp_path, line, says):
    # the writer writes nothing else; a second header (two traces joined with cat) would have its part read
    # with the first header's image root and config
    path = trace_with_last_line(tmp_path, line + b'{"task_id":"10"}\n')
    with pytest.raises(DataError, match=says) as err:
        list(read_trace(path)[1])
    assert err.value.line == 5 and err.value.path == str(path)
