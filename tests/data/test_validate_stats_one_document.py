"""A COCO json given to ``data validate`` or ``data stats`` is named once as one JSON document, as every other
data command names it (exit code 2). Before, validate printed a ``bad_json`` problem for each of its lines
("truncated?" on the first) and stats only warned that none of its lines passes (exit code 1)."""

from __future__ import annotations

import gzip
import json
import os
import re
import threading

import pytest

from reallod.data.stats import stats_files
from reallod.data.validate import validate_file
from reallod.errors import DataError
from tests.cli_helpers import run_cli

from .test_wrong_json_kind import COCO, RECORD

PRETTY = "not JSON Lines: its first line opens a JSON value it does not close"
ONE_LINE = "a COCO json (it has images and annotations), not JSON Lines of Real-Data records"


@pytest.fixture(params=["pretty", "one line", "gzip"])
def coco(request, tmp_path):
    """A COCO json as people have it, and the start of what must be said of it."""
    text = json.dumps(COCO) if request.param == "one line" else json.dumps(COCO, indent=1)
    if request.param == "gzip":
        path = tmp_path / "annotations.json.gz"
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path = tmp_path / "annotations.json"
        path.write_text(text)
    return path, ONE_LINE if request.param == "one line" else PRETTY


@pytest.mark.parametrize("command", [["data", "validate"], ["data", "stats"], ["data", "filter"]])
def test_every_data_command_names_a_coco_json_once(command, coco, tmp_path, capsys):
    path, said = coco
    extra = [tmp_path / "out.jsonl"] if command[-1] == "filter" else []
    code, out, err = run_cli([*command, path, *extra], capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {path}:1: {said}") and err.count("\n") == 1
    assert "reallod data convert from-coco" in err


def test_validate_with_fix_leaves_the_output_and_says_nothing_else(coco, tmp_path, capsys):
    path, said = coco
    fixed = tmp_path / "fixed.jsonl"
    fixed.write_text("precious\n")
    code, out, err = run_cli(["data", "validate", path, "--fix", fixed, "--json"], capsys)
    assert (code, out) == (2, "") and err.startswith(f"error: {path}:1: {said}")
    assert fixed.read_text() == "precious\n"
    assert sorted(os.listdir(tmp_path)) == sorted([path.name, "fixed.jsonl"])  # no temporary file left


def test_the_library_functions_raise_it(coco):
    path, said = coco
    with pytest.raises(DataError, match=re.escape(f"{path}:1: {said}")):
        validate_file(path)
    with pytest.raises(DataError, match=re.escape(f"{path}:1: {said}")):
        stats_files([path])


def test_stats_checks_every_file_before_counting(tmp_path, capsys):
    """A COCO json or a missing file second in the list stops the run before the first is counted."""
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(RECORD) + "\n")
    pretty = tmp_path / "annotations.json"
    pretty.write_text(json.dumps(COCO, indent=1))
    for second in (pretty, tmp_path / "missing.jsonl"):
        code, out, err = run_cli(["data", "stats", good, second], capsys)
        assert code == 2 and out == "" and err.startswith(f"error: {second}")


def _fifo(tmp_path, data: bytes):
    """A named pipe that a thread fills with ``data``: read once, in order, as ``<(zcat ...)`` is."""
    path = tmp_path / "pipe"
    os.mkfifo(path)

    def feed() -> None:
        with open(path, "wb") as f:
            f.write(data)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    return path, thread


@pytest.mark.parametrize("command", [["data", "validate"], ["data", "stats"]])
def test_a_pipe_is_checked_on_its_first_line(command, tmp_path, capsys):
    path, thread = _fifo(tmp_path, json.dumps(COCO, indent=1).encode())
    code, out, err = run_cli([*command, path], capsys)
    thread.join(10)
    assert code == 2 and out == "" and err.startswith(f"error: {path}:1: {PRETTY}")


def test_a_record_with_images_and_annotations_keys_is_still_a_record(tmp_path, capsys):
    """The COCO check is on a first line that is no record: a valid record with extra keys passes, as in filter."""
    path = tmp_path / "extra.jsonl"
    path.write_text(json.dumps({**RECORD, "images": [], "annotations": []}) + "\n")
    code, out, _ = run_cli(["data", "validate", path], capsys)
    assert code == 0 and "OK: 1 records checked" in out
    code, out, _ = run_cli(["data", "stats", path, "--json"], capsys)
    assert code == 0 and json.loads(out)["total"]["images"] == 1


def test_a_json_lines_file_with_a_cut_first_line_is_still_checked_line_by_line(tmp_path, capsys):
    path = tmp_path / "cut.jsonl"
    path.write_text('{"filename": "a.jpg", "hei\n' + json.dumps(RECORD) + "\n")
    code, out, _ = run_cli(["data", "validate", path], capsys)
    assert code == 1 and out.startswith(f"{path}:1: invalid JSON: the line ends inside a JSON value")


def test_validate_of_a_missing_or_unreadable_file_exits_2_as_the_other_commands(tmp_path, capsys):
    """It exited 1, the code of a file with problems, though its help promised 2 for unusable arguments."""
    missing = tmp_path / "nosuch.jsonl"
    for command in (["data", "validate"], ["data", "stats"], ["data", "filter"]):
        extra = [tmp_path / "o.jsonl"] if command[-1] == "filter" else []
        code, out, err = run_cli([*command, missing, *extra], capsys)
        assert (code, out, err) == (2, "", f"error: {missing}: no such file\n"), command
    if os.geteuid() != 0:  # root reads any file
        locked = tmp_path / "locked.jsonl"
        locked.write_text(json.dumps(RECORD) + "\n")
        locked.chmod(0)
        code, out, err = run_cli(["data", "validate", locked], capsys)
        assert (code, out, err) == (2, "", f"error: {locked}: cannot open: Permission denied\n")
    not_gzip = tmp_path / "x.jsonl.gz"
    not_gzip.write_text(json.dumps(RECORD) + "\n")
    code, out, _ = run_cli(["data", "validate", not_gzip], capsys)
    assert code == 1 and "not a gzip file" in out and "[read_error]" in out  # a file with a problem: exit 1
