"""A full disk (ENOSPC) while writing: 'error: OUT: No space left on device; free space ...', exit 2.

It printed 'error: unexpected OSError: [Errno 28] No space left on device' with no path (filter,
convert coco, validate --fix, split), exit 1: the OS names no file on a failed write, so the writer
names the output it was writing."""

from __future__ import annotations

import errno
import io
import os

import pytest

from reallod.data import io as data_io
from reallod.data import validate as validate_mod
from reallod.data import write_records
from tests.cli_helpers import run_cli

OLD = "an earlier output\n"


def _record(i: int) -> dict:
    return {"filename": f"{i}.jpg", "height": 40, "width": 40,
            "pairs": {"llm": [{"bboxes": [[1, 1, 20, 20]], "category": "dog", "relation": "single",
                               "positive_expressions": [f"dog {i}"], "negative_expressions": ["a cat"]}]}}


class FullDisk:
    """A binary file on a full disk: every write fails, as the OS fails it (no file named)."""

    def __init__(self, f) -> None:
        self._f = f

    def write(self, data) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._f, name)


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "in.jsonl"
    write_records(path, [_record(i) for i in range(5)])
    return path


class FullFile(io.FileIO):
    """A file descriptor on a full disk: the buffer above it takes writes until it must flush them."""

    def write(self, data) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _full_outputs(monkeypatch) -> None:
    """The outputs' writes fail when their buffer is flushed, and again when it is closed (as the OS does)."""
    monkeypatch.setattr(data_io.os, "fdopen", lambda fd, *a, **k: io.BufferedWriter(FullFile(fd, "wb")))


def _expect_named(code: int, err: str, out) -> None:
    assert code == 2, err
    assert err.strip() == (f"error: {out}: No space left on device; free space on that disk, "
                           "or write the output elsewhere"), err
    assert out.read_text() == OLD
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]  # no temporary file stays


@pytest.mark.parametrize("command", [["filter"], ["convert", "coco"], ["convert", "odvg"], ["sample", "-n", "2"]])
def test_a_full_disk_names_the_output(tmp_path, src, capsys, monkeypatch, command):
    out = tmp_path / "out.json"
    out.write_text(OLD)
    _full_outputs(monkeypatch)
    words = [w for w in command if not w.startswith("-") and not w.isdigit()]
    options = command[len(words):]
    code, _, err = run_cli(["data", *words, src, out, *options], capsys)
    _expect_named(code, err, out)


def test_a_full_disk_under_coco_s_spooled_sections_names_the_output(tmp_path, src, capsys, monkeypatch):
    """COCO's later sections are spooled to unnamed files beside the output: they fill the same disk."""
    from reallod.data import convert_common

    out = tmp_path / "out.json"
    out.write_text(OLD)
    real = convert_common.tempfile.TemporaryFile

    def full_spool(*args, **kwargs):
        with real(*args, **kwargs) as f:
            return io.BufferedRandom(FullFile(os.dup(f.fileno()), "r+"))

    monkeypatch.setattr(convert_common.tempfile, "TemporaryFile", full_spool)
    code, _, err = run_cli(["data", "convert", "coco", src, out], capsys)
    _expect_named(code, err, out)


def test_a_full_disk_at_the_last_flush_names_the_output(tmp_path, src, capsys, monkeypatch):
    out = tmp_path / "out.jsonl"
    out.write_text(OLD)
    monkeypatch.setattr(data_io.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "x")))
    code, _, err = run_cli(["data", "filter", src, out], capsys)
    assert code == 2 and err.startswith(f"error: {out}: x; free space") and out.read_text() == OLD


def test_validate_fix_on_a_full_disk_names_the_output(tmp_path, src, capsys, monkeypatch):
    """The workers write their share of --fix to part files beside OUT: their failure names OUT too."""
    out = tmp_path / "fixed.jsonl"
    out.write_text(OLD)
    real_open = open

    def full_parts(path, *args, **kwargs):
        f = real_open(path, *args, **kwargs)
        return FullDisk(f) if str(path).endswith(".part") else f

    monkeypatch.setattr(validate_mod, "open", full_parts, raising=False)
    code, _, err = run_cli(["data", "validate", src, "--fix", out, "--workers", "1"], capsys)
    _expect_named(code, err, out)


def test_validate_fix_copying_the_parts_on_a_full_disk_names_the_output(tmp_path, src, capsys, monkeypatch):
    out = tmp_path / "fixed.jsonl"
    out.write_text(OLD)
    _full_outputs(monkeypatch)
    code, _, err = run_cli(["data", "validate", src, "--fix", out, "--workers", "1"], capsys)
    _expect_named(code, err, out)


def test_any_system_error_is_one_line_without_unexpected(tmp_path, src, capsys, monkeypatch):
    from reallod.data import ops

    def failing(*args, **kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(ops, "filter_file", failing)
    code, _, err = run_cli(["data", "filter", src, tmp_path / "o.jsonl"], capsys)
    assert (code, err.strip()) == (2, "error: Input/output error")

    def not_a_system_error(*args, **kwargs):
        raise OSError("a client library's error")  # no errno: a bug to report, as before

    monkeypatch.setattr(ops, "filter_file", not_a_system_error)
    code, _, err = run_cli(["data", "filter", src, tmp_path / "o.jsonl"], capsys)
    assert code == 1 and err.startswith("error: unexpected OSError: a client library's error")
