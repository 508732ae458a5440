"""Piped input (``zcat X | reallod data filter /dev/stdin ...``, ``<(zcat X)``): read whole, in one pass.

A probe of the gzip magic opened the pipe apart from its reading and took its first lines with it (6
of 12 records read, exit 0); stats and validate cut it into byte ranges ('unexpected
UnsupportedOperation: File or stream is not seekable')."""

from __future__ import annotations

import gzip
import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from reallod.data import read_records
from reallod.data.chunks import plan_ranges
from reallod.data.io import is_stream, iter_lines, read_whole
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
