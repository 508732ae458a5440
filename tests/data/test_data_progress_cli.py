"""``reallod data ... --progress``: a long data command says how far it has read (lines, in a log); by default
only on a terminal, so a pipeline's stderr stays as it was."""

from __future__ import annotations

import json
import os
import re

from tests.cli_helpers import run_cli

LINE = re.compile(r"^(?P<cmd>[a-z -]+): reading (?P<what>\S+( files)?) (?P<done>[\d.]+ [kMG]?B)/(?P<total>[\d.]+ [kMG]?B) "
                  r"\((?P<pct>[\d.]+)%\)  [\d.]+ [kMG]?B/s  ETA [\d:?]+$")


def big_file(path, n: int = 12000):
    """About 3 MB: a few of the readers' 1 MiB reads, each one a chance for a line."""
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"filename": f"img{i:05d}.jpg", "height": 100, "width": 100, "pairs": {"llm": [{
                "bboxes": [[1, 2, 30, 40]], "category": "dog", "relation": "single",
                "positive_expressions": [f"the dog number {i} lying on the grass in the sun"],
                "negative_expressions": ["a cat", "a red bus"]}]}}) + "\n")
    return path


def progress_lines(err: str) -> list[re.Match]:
    return [m for line in err.splitlines() if (m := LINE.match(line))]


def test_progress_into_a_log_gives_lines_of_the_bytes_read(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("REALLOD_PROGRESS_INTERVAL", "0.000001")
    src = big_file(tmp_path / "big.jsonl")
    code, out, err = run_cli(["data", "convert", "odvg", src, tmp_path / "o.jsonl", "--progress"], capsys)
    assert code == 0, err
    lines = progress_lines(err)
    assert len(lines) >= 2 and len(lines) == len(err.splitlines()), err
    assert {m["cmd"] for m in lines} == {"convert odvg"} and {m["what"] for m in lines} == {"big.jsonl"}
    assert float(lines[-1]["pct"]) > float(lines[0]["pct"])
    assert out.startswith(f"{tmp_path / 'o.jsonl'}: 12000 records read")  # the summary, as without --progress


def test_merge_counts_both_passes_and_stats_its_parallel_ranges(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("REALLOD_PROGRESS_INTERVAL", "0.000001")
    a, b = big_file(tmp_path / "a.jsonl"), big_file(tmp_path / "b.jsonl", 6000)
    code, _, err = run_cli(["data", "merge", a, b, "-o", tmp_path / "m.jsonl", "--progress"], capsys)
    assert code == 0, err
    lines = progress_lines(err)
    total = 2 * (os.path.getsize(a) + os.path.getsize(b))
    assert lines and {m["what"] for m in lines} == {"2 files"} and lines[-1]["total"] == f"{total / 1e6:.1f} MB", err
    assert float(lines[-1]["pct"]) > 50  # the second pass is counted on the same bar
    code, _, err = run_cli(["data", "stats", a, "--progress", "--workers", "1"], capsys)
    assert code == 0 and progress_lines(err) and {m["cmd"] for m in progress_lines(err)} == {"stats"}, err


def test_by_default_a_stderr_that_is_no_terminal_gets_no_progress(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("REALLOD_PROGRESS_INTERVAL", "0.000001")
    src = big_file(tmp_path / "big.jsonl")
    for extra in ([], ["--no-progress"]):
        code, _, err = run_cli(["data", "filter", src, tmp_path / "f.jsonl", "-s", "llm", *extra], capsys)
        assert code == 0 and err == "", err


def test_a_bad_interval_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("REALLOD_PROGRESS_INTERVAL", "0")
    src = big_file(tmp_path / "big.jsonl", 10)
    out = tmp_path / "o.jsonl"
    code, _, err = run_cli(["data", "sample", src, out, "-n", "3", "--progress"], capsys)
    assert code == 2 and err.strip() == ("error: REALLOD_PROGRESS_INTERVAL='0': expected seconds between progress "
                                         "lines, a number > 0 (default 30)"), err
    assert not out.exists()
