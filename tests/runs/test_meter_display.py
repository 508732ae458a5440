"""Showing a data command's meter: the amounts, the log line every interval, the bar on a terminal."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from reallod.runs.meter_display import LineMeter, RichMeter, amount_text, rate_text


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def test_amounts_in_bytes_with_and_without_a_total_and_in_other_units():
    assert amount_text(120_000_000, 268_400_000, "bytes") == "120.0 MB/268.4 MB (44.7%)"
    assert amount_text(70_900_000, None, "bytes") == "70.9 MB"
    assert amount_text(81_920, 1_052_114, "boxes + images") == "81,920/1,052,114 boxes + images (7.8%)"
    assert rate_text(22_100_000, "bytes") == "22.1 MB/s" and rate_text(35_012.4, "boxes") == "35,012/s"


def test_a_log_gets_a_line_each_interval_and_none_before():
    clock, log = FakeClock(), io.StringIO()
    meter = LineMeter(log, "convert odvg", interval=30, clock=clock)
    meter.phase("reading big.jsonl", 1_000_000_000)
    clock.now += 10
    meter.advance(200_000_000)
    assert log.getvalue() == ""  # a command shorter than the interval writes nothing
    clock.now += 20
    meter.advance(100_000_000)
    assert log.getvalue() == "convert odvg: reading big.jsonl 300.0 MB/1.0 GB (30.0%)  10.0 MB/s  ETA 1:10\n"
    clock.now += 5
    meter.advance(10_000_000)
    assert log.getvalue().count("\n") == 1  # the next one waits for the next interval
    clock.now += 30
    meter.advance(2_000_000_000)  # a head read twice never shows more than the whole
    assert log.getvalue().splitlines()[-1].startswith("convert odvg: reading big.jsonl 1.0 GB/1.0 GB (100.0%)")
    meter.stop()
    assert log.getvalue().count("\n") == 2  # no closing line: the command's summary follows


def test_a_new_phase_starts_its_own_count_and_pace():
    clock, log = FakeClock(), io.StringIO()
    meter = LineMeter(log, "convert from-coco", interval=1, clock=clock)
    meter.phase("reading coco.json", 10_000)
    meter.advance(10_000)
    meter.phase("converting", 4_000, unit="boxes + images")
    clock.now += 2
    meter.advance(1_000)
    assert log.getvalue() == "convert from-coco: converting 1,000/4,000 boxes + images (25.0%)  500/s  ETA 0:06\n"


def test_a_pipe_has_no_total_and_no_eta():
    clock, log = FakeClock(), io.StringIO()
    meter = LineMeter(log, "filter", interval=1, clock=clock)
    meter.phase("reading stdin", None)
    clock.now += 2
    meter.advance(4_000_000)
    assert log.getvalue() == "filter: reading stdin 4.0 MB  2.0 MB/s  ETA ?\n"


def test_a_log_that_cannot_be_written_never_stops_the_command_and_a_bad_interval_is_refused():
    log = io.StringIO()
    log.close()
    clock = FakeClock()
    meter = LineMeter(log, "stats", interval=1, clock=clock)
    meter.phase("reading a.jsonl", 10)
    clock.now += 5
    meter.advance(5)  # ValueError of the closed stream: dropped
    with pytest.raises(ValueError, match="interval must be > 0"):
        LineMeter(io.StringIO(), "stats", interval=0)


def test_on_a_terminal_a_bar_per_phase_with_amounts_speed_and_time_left():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=140, color_system=None)
    meter = RichMeter(console, "convert odvg")
    meter.phase("reading big.jsonl", 268_400_000)
    meter.advance(120_000_000)
    console.print("a line the command printed")  # above the bar, not through it
    meter.advance(148_400_000 + 5)
    meter.stop()
    text = out.getvalue()
    assert "a line the command printed" in text
    assert "convert odvg: reading big.jsonl" in text and "268.4 MB/268.4 MB (100.0%)" in text, text
    meter.advance(1)  # after the end: nothing to draw on, no error


def test_a_file_name_with_brackets_is_shown_as_it_is_and_lines_above_the_bar_keep_their_text():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=140, color_system=None, markup=False, highlight=False)
    meter = RichMeter(console, "filter")
    meter.phase("reading out-[x].jsonl", 10)
    console.print("FILE:3: height: missing [missing_field]")
    meter.advance(10)
    meter.stop()
    assert "filter: reading out-[x].jsonl" in out.getvalue() and "[missing_field]" in out.getvalue()
