"""Piped input (``zcat X | reallod data filter /dev/stdin ...``, ``<(zcat X)``): read whole, in one pass.

A probe of the gzip magic opened the pipe apart from its reading and took its first lines with it (6
of 12 records read, exit 0); stats and validate cut it into byte ranges ('unexpected
UnsupportedOperation: File or stream is not seekable')."""

from __future__ import annotations

import gzip
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from reallod.data import read_records
from reallod.data.chunks import plan_ranges
from reallod.data.io import is_stream, iter_lines, read_whole, writes_through
from reallod.data.stats import file_stats
from reallod.data.validate import validate_file
from reallod.errors import DataError
from tests.cli_helpers import run_cli


def _record(i: int) -> dict:
    return {"filename": f"{i}.jpg", "height": 40, "width": 40,
            "pairs": {"llm": [{"bboxes": [[1, 1, 20, 20]], "category": "dog", "relation": "single",
                               "positive_expressions": [f"dog {i}"], "negative_expressions": ["a cat"]}]}}


def _lines(first: int, n: int) -> bytes:
    return b"".join(json.dumps(_record(i)).encode() + b"\n" for i in range(first, first + n))


@contextmanager
def piped(tmp_path: Path, *parts: bytes) -> Iterator[str]:
    """A pipe's path (``/dev/fd/N``, as bash's ``<(...)`` gives) that receives ``parts`` with a pause
    between them, as ``(cat a; sleep 1; cat b) |`` does: a reader that takes what has arrived and
    opens the pipe again misses the first part."""
    for i, part in enumerate(parts):
        (tmp_path / f"part{i}").write_bytes(part)
    script = "; sleep 0.3; ".join(f"cat {tmp_path / f'part{i}'}" for i in range(len(parts)))
    writer = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, pass_fds=())
    try:
        yield f"/dev/fd/{writer.stdout.fileno()}"
    finally:
        writer.stdout.close()
        writer.wait(timeout=10)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_every_line_of_a_pipe_is_read(tmp_path, compress):
    pack = gzip.compress if compress else (lambda b: b)
    with piped(tmp_path, pack(_lines(0, 6)), pack(_lines(6, 6))) as path:
        assert is_stream(path)
        names = [r.filename for r in read_records(path)]
    assert names == [f"{i}.jpg" for i in range(12)]


def test_a_pipe_that_hands_over_its_magic_bytes_one_at_a_time_is_still_gzip(tmp_path):
    data = gzip.compress(_lines(0, 3))
    with piped(tmp_path, data[:1], data[1:]) as path:
        assert [n for n, _ in iter_lines(path)] == [1, 2, 3]
    with piped(tmp_path, data[:1], data[1:]) as path:
        assert read_whole(path) == _lines(0, 3)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_cli_filter_reads_a_whole_pipe(tmp_path, capsys, compress):
    pack = gzip.compress if compress else (lambda b: b)
    out = tmp_path / "out.jsonl"
    with piped(tmp_path, pack(_lines(0, 6)), pack(_lines(6, 6))) as path:
        code, stdout, err = run_cli(["data", "filter", path, out], capsys)
    assert code == 0, err
    assert "12 records read, 12 written" in stdout
    assert len(list(read_records(out))) == 12


def test_cli_convert_odvg_reads_a_gzip_pipe(tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    with piped(tmp_path, gzip.compress(_lines(0, 6)), gzip.compress(_lines(6, 6))) as path:
        code, stdout, err = run_cli(["data", "convert", "odvg", path, out], capsys)
    assert code == 0 and "12 records read, 12 lines written" in stdout, err


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_stats_and_validate_read_a_pipe_in_one_process(tmp_path, compress):
    """Several workers asked for: a pipe cannot be cut into ranges, so it is read in order."""
    pack = gzip.compress if compress else (lambda b: b)
    with piped(tmp_path, pack(_lines(0, 6)), pack(_lines(6, 6))) as path:
        stats = file_stats(path, workers=2, chunk_bytes=64)
    assert stats.images == 12 and stats.bad_lines == 0
    fixed = tmp_path / "fixed.jsonl"
    with piped(tmp_path, pack(_lines(0, 6)), pack(_lines(6, 6))) as path:
        report = validate_file(path, workers=2, chunk_bytes=64, fix=fixed)
    assert report.ok and report.records == 12 and report.written == 12
    assert len(list(read_records(fixed))) == 12


def test_cli_stats_and_validate_on_a_pipe(tmp_path, capsys):
    with piped(tmp_path, gzip.compress(_lines(0, 6)), gzip.compress(_lines(6, 6))) as path:
        code, out, err = run_cli(["data", "stats", path, "--json", "--workers", "2"], capsys)
    assert code == 0 and json.loads(out)["total"]["images"] == 12, err
    with piped(tmp_path, _lines(0, 6), _lines(6, 6)) as path:
        code, out, err = run_cli(["data", "validate", path, "--workers", "2"], capsys)
    assert code == 0 and "OK: 12 records checked" in out, err


def test_byte_ranges_refuse_a_pipe_by_name(tmp_path):
    with piped(tmp_path, _lines(0, 2)) as path:
        with pytest.raises(DataError, match="not a regular file"):
            plan_ranges(path, 2)
        # drain it: the writer must not block on a full pipe
        list(iter_lines(path))


def test_merge_refuses_a_pipe_it_would_read_twice(tmp_path, capsys):
    """merge reads each input twice: the second pass found the pipe empty and lost its records."""
    a = tmp_path / "a.jsonl"
    a.write_bytes(_lines(0, 2))
    out = tmp_path / "m.jsonl"
    with piped(tmp_path, _lines(2, 2)) as path:
        code, _, err = run_cli(["data", "merge", a, path, "-o", out], capsys)
        list(iter_lines(path))
    assert code == 2 and f"error: {path}: not a regular file (a pipe or a device)" in err
    assert "save it to a file first" in err and not out.exists()


def test_an_output_that_is_a_fifo_or_a_device_is_written_through_not_replaced(tmp_path, capsys):
    """The output was made aside and renamed into place: a FIFO became a regular file its reader never
    saw, and as root ``--fix /dev/full`` replaced the device node with a file (exit 0)."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(_lines(0, 3))
    fifo = tmp_path / "out.jsonl"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    try:
        code, _, _ = run_cli(["data", "filter", src, fifo], capsys)
        got = reader.communicate(timeout=30)[0]
    finally:
        reader.kill()  # the old writer never opened the FIFO: its reader waits for ever
    assert [json.loads(line)["filename"] for line in got.splitlines()] == ["0.jpg", "1.jpg", "2.jpg"]
    assert code == 0 and stat.S_ISFIFO(os.stat(fifo).st_mode) and not list(tmp_path.glob(".*"))
    code, _, err = run_cli(["data", "validate", src, "--fix", "/dev/full"], capsys)
    assert code == 2 and "/dev/full: No space left on device" in err
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_records_on_stdout_and_the_report_on_stderr():
    """``--fix /dev/stdout`` / ``data sample IN /dev/stdout | ...``: the report went to stdout too, into
    the records (and a stdout that is a file had its start written over)."""
    src = Path(__file__).resolve().parents[2] / "examples" / "realdata.jsonl"
    for args in (["data", "sample", src, "/dev/stdout", "-n", "2"], ["data", "validate", src, "--fix", "/dev/stdout"]):
        done = subprocess.run([sys.executable, "-m", "reallod", *map(str, args)], capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert all(json.loads(line)["filename"] for line in done.stdout.splitlines()) and done.stdout
        assert b"/dev/stdout" in done.stderr


def test_stdout_redirected_to_a_file_gets_the_records_and_dev_shm_is_a_file(tmp_path):
    """/dev/stdout is a link to /proc/self/fd/1: with stdout a file it resolves to a regular file, and the
    output, made aside and renamed, replaced the link itself (for every process on the machine)."""
    src = Path(__file__).resolve().parents[2] / "examples" / "realdata.jsonl"
    with open(tmp_path / "out.jsonl", "wb") as stdout:
        done = subprocess.run([sys.executable, "-m", "reallod", "data", "sample", str(src), "/dev/stdout", "-n", "2"],
                              stdout=stdout, stderr=subprocess.PIPE, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len([json.loads(line) for line in (tmp_path / "out.jsonl").read_bytes().splitlines()]) == 2
    assert os.path.islink("/dev/stdout") and writes_through("/dev/stdout") and writes_through("/dev/fd/1")
    assert not writes_through("/dev/shm/x.jsonl") and not writes_through(tmp_path / "x.jsonl")


def test_a_journaled_run_refuses_a_pipe_or_a_device_as_its_output(tmp_path, capsys):
    examples = Path(__file__).resolve().parents[2] / "examples"
    code, _, err = run_cli(["realign", examples / "realdata.jsonl", "--config", "offline", "--out", "/dev/stdout"],
                           capsys)
    assert code == 2 and "--out /dev/stdout is a pipe or a device: a run keeps its journal beside its output" in err
    code, _, err = run_cli(["generate", "--annotations", examples / "annotations.json", "--images",
                            examples / "images", "--config", "offline", "--out", "/dev/null"], capsys)
    assert code == 2 and "--out /dev/null is a pipe or a device" in err
    code, _, err = run_cli(["realign", "merge", tmp_path / "a.jsonl", tmp_path / "b.jsonl", "--out", "/dev/stdout"],
                           capsys)
    assert code == 2 and "--out /dev/stdout is a pipe or a device: the merge writes its trace beside its output" in err
    assert not list(Path("/dev").glob("*.journal.jsonl")) and not list(Path("/dev").glob("*.trace.jsonl"))
