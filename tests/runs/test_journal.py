import asyncio
import os

import pytest

from reallod.errors import ReallodError
from reallod.runs.journal import Journal, JournalMismatch, JournalWriteError, read_journal

FP = {"config": "abc", "input": "def"}


def test_append_resume_and_no_duplicates(tmp_path):
    path = tmp_path / "out.journal.jsonl"
    with Journal.open(path, FP) as j:
        j.append_sync("t1", {"v": 1})
        j.append_sync("t1", {"v": "again"})  # second result of the same task is ignored
    with Journal.open(path, FP) as j:
        assert j.done == {"t1": {"v": 1}}
        j.append_sync("t2", {"v": 2})
    header, done = read_journal(path)
    assert header["fingerprint"] == FP and list(done) == ["t1", "t2"]


def test_results_appended_soon_share_one_write(tmp_path, monkeypatch):
    """append_soon buffers until ``within_s`` has passed since the last write; flush_sync and close write
    the rest; the first result of a task counts."""
    path = tmp_path / "soon.journal.jsonl"
    clock = [100.0]
    monkeypatch.setattr("reallod.runs.journal.time.monotonic", lambda: clock[0])
    j = Journal.open(path, FP)
    j.append_soon("t1", {"v": 1}, within_s=2.0)
    j.append_soon("t1", {"v": "again"}, within_s=2.0)
    assert read_journal(path)[1] == {} and "t1" not in j.done  # buffered: not done until on disk
    clock[0] += 2.5
    j.append_soon("t2", {"v": 2}, within_s=2.0)  # 2.5 s since the last write: both go in one write
    assert read_journal(path)[1] == {"t1": {"v": 1}, "t2": {"v": 2}}
    j.append_soon("t3", {"v": 3}, within_s=2.0)
    j.close()
    assert list(read_journal(path)[1]) == ["t1", "t2", "t3"]


def test_partial_last_line_is_cut_on_resume(tmp_path):
    path = tmp_path / "j.jsonl"
    with Journal.open(path, FP) as j:
        j.append_sync("t1", {"v": 1})
    with open(path, "ab") as f:
        f.write(b'{"task_id": "t2", "res')  # crash mid-write
    with Journal.open(path, FP) as j:
        assert list(j.done) == ["t1"]
        j.append_sync("t3", {"v": 3})
    assert list(read_journal(path)[1]) == ["t1", "t3"]


def test_changed_config_is_refused_unless_forced(tmp_path):
    path = tmp_path / "j.jsonl"
    with Journal.open(path, FP) as j:
        j.append_sync("t1", {"v": 1})
    with pytest.raises(JournalMismatch, match=r"different config.*--force-resume to continue"):
        Journal.open(path, {"config": "CHANGED", "input": "def"})
    Journal.open(path, {"config": "CHANGED", "input": "def"}, force=True).close()
    with Journal.open(tmp_path / "k.jsonl", {**FP, "config": "0123456789abcdef0123", "max_cycles": 3}) as j:
        j.append_sync("t1", {"v": 1})
    with pytest.raises(JournalMismatch, match=r"different config, max_cycles \(3 in the journal, 1 now\);"):
        Journal.open(tmp_path / "k.jsonl", {**FP, "config": "ffff56789abcdef01234", "max_cycles": 1})


@pytest.mark.parametrize("changed", ["config", "input"])
def test_a_journal_without_a_finished_task_starts_over_with_another_setup(tmp_path, changed):
    """A first run that stopped before finishing a task (no server yet) blocked the obvious next step,
    the same command with another config: there is nothing to keep, nor to mix."""
    path = tmp_path / "j.jsonl"
    with Journal.open(path, FP, retry=lambda r: r.get("failed")) as j:
        j.append_sync("t1", {"failed": True})  # done again by any rerun
    other = {**FP, changed: "CHANGED"}
    with Journal.open(path, other, retry=lambda r: r.get("failed")) as j:
        assert j.done == {}
        j.append_sync("t2", {"v": 2})
    header, done = read_journal(path)
    assert header["fingerprint"] == other and list(done) == ["t2"]


@pytest.mark.parametrize("key", ["input", "annotations"])
def test_another_input_is_refused_even_when_forced(tmp_path, key):
    """--force-resume never puts two inputs' results in one output; the message says what to do."""
    path = tmp_path / "j.jsonl"
    fp = {"config": "abc", key: "def"}
    with Journal.open(path, fp, meta={key: "/data/first.jsonl"}) as j:
        j.append_sync("t1", {"v": 1})
    for force in (False, True):
        with pytest.raises(JournalMismatch) as caught:
            Journal.open(path, {"config": "other", key: "CHANGED"}, force=force)
        message = str(caught.value)
        assert f"different {key} (the journal's: /data/first.jsonl" in message and "also changed: config" in message
        assert "not even with --force-resume" in message
        assert "another --out" in message and "delete the journal" in message
    assert list(read_journal(path)[1]) == ["t1"]  # untouched


def test_not_a_journal(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('{"hello": 1}\n')
    with pytest.raises(ReallodError, match="not a reallod journal"):
        Journal.open(path, FP)


def test_concurrent_appends_group_commit(tmp_path, monkeypatch):
    path = tmp_path / "j.jsonl"
    syncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (syncs.append(fd), real_fsync(fd)))

    async def main():
        with Journal.open(path, FP) as j:
            syncs.clear()
            await asyncio.gather(*(j.append(f"t{i}", {"i": i}) for i in range(50)))
            return j.done

    done = asyncio.run(main())
    assert len(done) == 50 and len(read_journal(path)[1]) == 50
    assert 1 <= len(syncs) < 50  # batched


def test_write_error_leaves_journal_exact(tmp_path, monkeypatch):
    path = tmp_path / "j.jsonl"

    async def main():
        with Journal.open(path, FP) as j:
            await j.append("ok", {"v": 1})
            real_write = os.write
            calls = {"n": 0}

            def failing_write(fd, data):
                calls["n"] += 1
                if calls["n"] == 1:
                    real_write(fd, bytes(data)[:5])  # a torn partial write, then the disk is full
                    raise OSError(28, "No space left on device")
                return real_write(fd, data)

            monkeypatch.setattr(os, "write", failing_write)
            with pytest.raises(JournalWriteError, match="No space left"):
                await j.append("lost", {"v": 2})
            monkeypatch.setattr(os, "write", real_write)
            await j.append("later", {"v": 3})

    asyncio.run(main())
    assert list(read_journal(path)[1]) == ["ok", "later"]


def test_a_refused_synchronous_write_is_a_clear_error_and_leaves_the_journal_whole(tmp_path, monkeypatch):
    path = tmp_path / "j.jsonl"
    j = Journal.open(path, FP)
    j.append_sync("ok", {"v": 1})
    real_write = os.write

    def disk_full(fd, data):
        real_write(fd, bytes(data)[:5])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    j.append_soon("lost", {"v": 2}, within_s=60.0)
    with pytest.raises(JournalWriteError, match=r"j\.jsonl: cannot write the journal \(No space left"):
        j.flush_sync()
    monkeypatch.setattr(os, "write", real_write)
    j.append_sync("later", {"v": 3})
    j.close()
    assert list(read_journal(path)[1]) == ["ok", "later"]


def test_before_write_runs_before_every_write(tmp_path):
    """The response cache commits there: a task the journal holds has its answers kept."""
    path = tmp_path / "j.jsonl"
    seen: list[int] = []
    j = Journal.open(path, FP, before_write=lambda: seen.append(len(read_journal(path)[1])))
    j.append_sync("t1", {"v": 1})

    async def more():
        await asyncio.gather(*(j.append(f"t{i}", {"i": i}) for i in range(2, 6)))

    asyncio.run(more())
    j.close()
    assert seen[0] == 0 and seen[1] == 1 and len(read_journal(path)[1]) == 5  # called before each write lands


def test_a_fingerprint_with_tuples_resumes(tmp_path):
    """A fingerprint is compared as its header reads back from JSON (a tuple comes back a list)."""
    path = tmp_path / "j.jsonl"
    with Journal.open(path, {"size": (800, 1333)}) as j:
        j.append_sync("t1", {"v": 1})
    with Journal.open(path, {"size": (800, 1333)}) as j:
        assert list(j.done) == ["t1"]


def test_rewrite_keeps_exactly_the_results_given_and_goes_on_appending(tmp_path):
    path = tmp_path / "out.journal.jsonl"
    with Journal.open(path, {"config": "old"}) as j:
        j.append_sync("stale", {"v": 0})
    with Journal.rewrite(path, FP, [("t1", {"v": 1}), ("t2", {"v": 2}), ("t1", {"v": "again"})],
                         keep=lambda r: r["v"]) as j:
        assert j.done == {"t1": 1, "t2": 2}
        j.append_sync("t3", {"v": 3})
    header, done = read_journal(path)
    assert header["fingerprint"] == FP and done == {"t1": {"v": 1}, "t2": {"v": 2}, "t3": {"v": 3}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.journal.jsonl"]  # no temporary file left


def test_a_rewrite_that_fails_leaves_the_old_journal(tmp_path):
    path = tmp_path / "out.journal.jsonl"
    with Journal.open(path, FP) as j:
        j.append_sync("t1", {"v": 1})

    def results():
        yield "t9", {"v": 9}
        raise RuntimeError("the caller failed half-way")

    with pytest.raises(RuntimeError):
        Journal.rewrite(path, {"config": "new"}, results())
    assert read_journal(path) == ({"journal": 1, "fingerprint": FP}, {"t1": {"v": 1}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.journal.jsonl"]


def test_retry_takes_results_out_of_the_journal_on_open(tmp_path):
    path = tmp_path / "j.jsonl"
    with Journal.open(path, {"config": "c"}) as j:
        for tid, verdict in [("a", "correct"), ("b", "failed"), ("c", "wrong")]:
            j.append_sync(tid, {"verdict": verdict})
    with open(path, "ab") as f:
        f.write(b'{"task_id": "d", "res')  # a torn tail goes too
    again = Journal.open(path, {"config": "c"}, retry=lambda r: r["verdict"] == "failed")
    assert again.retried == 1 and again.resumed == 2 and set(again.done) == {"a", "c"}
    again.append_sync("b", {"verdict": "correct"})
    again.close()
    assert read_journal(path)[1] == {"a": {"verdict": "correct"}, "c": {"verdict": "wrong"},
                                     "b": {"verdict": "correct"}}
    with Journal.open(path, {"config": "c"}, retry=lambda r: r["verdict"] == "failed") as last:
        assert last.retried == 0


def test_a_journaled_run_refuses_another_runs_journal_or_trace_or_a_folder_as_its_output(tmp_path, capsys):
    """`--out old.journal.jsonl` replaced a finished run's journal with Real-Data (1,320 tasks lost); `--out
    shard.trace.jsonl.gz` replaced the trace the successor trains on; `--out .` was "unexpected ValueError:
    PosixPath('.') has an empty name"."""
    import gzip
    from pathlib import Path

    from tests.cli_helpers import run_cli

    examples = Path(__file__).resolve().parents[2] / "examples"
    journal = tmp_path / "old.journal.jsonl"
    journal.write_text('{"journal": 1, "fingerprint": {}}\n{"task": "0", "result": {}}\n')
    trace = tmp_path / "old.trace.jsonl.gz"
    trace.write_bytes(gzip.compress(b'{"trace": 1, "input": "x"}\n'))
    before = journal.read_bytes(), trace.read_bytes()
    for out, said in ((journal, "is a run's journal: the output written there would replace what it holds"),
                      (trace, "is a run's trace: the output written there would replace what it holds"),
                      (Path("."), "--out . is a folder: give the path of a file")):
        code, _, err = run_cli(["realign", examples / "realdata.jsonl", "--config", "offline", "--out", out], capsys)
        assert code == 2 and said in err, err
    assert (journal.read_bytes(), trace.read_bytes()) == before
