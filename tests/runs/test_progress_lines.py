"""``--progress`` into a log: plain lines every interval while the run goes (a Rich live bar draws
nothing on a stderr that is no terminal until the run ends), and the Rich bar on a terminal."""

from __future__ import annotations

import io
import re
import threading
import time

import pytest

from reallod.agent.task import VERDICTS
from reallod.cli.common import progress_interval, progress_monitor
from reallod.errors import ConfigError
from reallod.runs.progress import DEFAULT_LINE_INTERVAL_S, LineMonitor, RichMonitor


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def wait_until(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_the_line_says_done_total_percent_pace_eta_in_flight_and_outcomes():
    clock = FakeClock()
    monitor = LineMonitor(io.StringIO(), in_flight=lambda: 64, labels=VERDICTS, interval=3600, clock=clock)
    monitor.set_total(1_000_000)
    monitor.start(resumed=0)
    try:
        for k in range(12_345):
            monitor.task_done("failed" if k < 3 else "rewritten" if k < 2_003 else "correct")
        clock.now += 12_345 / 85.2  # 85.2 tasks/s
        assert monitor.line() == ("re-aligning: 12,345/1,000,000 tasks (1.2%)  85.2 tasks/s  ETA 3:13:12  "
                                  "in flight 64  correct 10,342 rewritten 2,000 failed 3")
    finally:
        monitor.stop()


def test_the_pace_counts_this_session_only_and_an_unknown_total_shows_a_question_mark():
    clock = FakeClock()
    monitor = LineMonitor(io.StringIO(), description="generating", labels=(), interval=3600, clock=clock)
    monitor.start(resumed=500)  # finished by an earlier run: no part of this session's pace
    try:
        for _ in range(20):
            monitor.task_done("generated")
        clock.now += 10
        assert monitor.line() == "generating: 520/? tasks  2.0 tasks/s  ETA ?  in flight 0"
        monitor.set_total(1_000, resumed=400)  # a smaller --limit: 400 of its tasks were resumed
        assert monitor.line().startswith("generating: 420/1,000 tasks (42.0%)  2.0 tasks/s  ETA 4:50  ")
    finally:
        monitor.stop()


def test_lines_are_written_while_the_run_goes_and_a_final_one_when_it_ends():
    stream = io.StringIO()
    monitor = LineMonitor(stream, labels=VERDICTS, interval=0.02)
    monitor.set_total(100)
    monitor.start(resumed=0)
    for _ in range(7):
        monitor.task_done("correct")
    # nothing finishes for a while: lines still come (a run waiting on a slow server is alive)
    assert wait_until(lambda: stream.getvalue().count("\n") >= 3), stream.getvalue()
    during = stream.getvalue().splitlines()
    assert all(line.startswith("re-aligning: 7/100 tasks (7.0%)  ") and " ETA " in line and "correct 7" in line
               for line in during), during
    monitor.stop()
    lines = stream.getvalue().splitlines()
    assert re.fullmatch(r"re-aligning: 7/100 tasks \(7\.0%\)  [\d.]+ tasks/s  took 0:00  in flight 0  correct 7",
                        lines[-1]), lines[-1]
    assert sum(" took " in line for line in lines) == 1
    monitor.stop()  # the runner's finally after an earlier stop: no second final line
    assert stream.getvalue().splitlines() == lines
    time.sleep(0.1)  # the thread is gone: no line after the end
    assert stream.getvalue().splitlines() == lines


def test_counts_from_many_threads_while_lines_are_written_are_all_kept():
    """Outcomes first seen while the writer reads the counts (labels=None: every outcome, as seen)."""
    stream = io.StringIO()
    monitor = LineMonitor(stream, labels=None, interval=0.001)
    monitor.start(resumed=0)

    def finish(k: int) -> None:
        for i in range(2_000):
            monitor.task_done(f"kind{(k * 7 + i) % 50}")

    workers = [threading.Thread(target=finish, args=(k,)) for k in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    monitor.stop()
    final = stream.getvalue().splitlines()[-1]
    assert final.startswith("re-aligning: 8,000/? tasks  "), final
    assert sum(int(n.replace(",", "")) for n in re.findall(r"kind\d+ ([\d,]+)", final)) == 8_000


def test_a_log_that_cannot_be_written_never_stops_the_run():
    class Closed(io.StringIO):
        def write(self, s: str) -> int:
            raise OSError(28, "No space left on device")

    monitor = LineMonitor(Closed(), interval=0.005)
    monitor.start(resumed=0)
    monitor.task_done("correct")
    time.sleep(0.05)
    monitor.stop()
    assert monitor._thread is None  # the writer thread survived its failed writes and ended on stop


def test_a_monitor_never_started_writes_nothing():
    stream = io.StringIO()
    LineMonitor(stream).stop()
    assert stream.getvalue() == ""
    with pytest.raises(ValueError, match="interval"):
        LineMonitor(stream, interval=0)


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def plain_env(monkeypatch):
    """Rich decides on its own when these are set (a CI's FORCE_COLOR): the tests decide here."""
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "NO_COLOR", "TERM", "JUPYTER_COLUMNS",
                 "REALLOD_PROGRESS_INTERVAL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_progress_on_a_log_is_lines_on_a_terminal_the_rich_bar_and_by_default_only_on_a_terminal(plain_env):
    log = io.StringIO()
    plain_env.setattr("sys.stderr", log)
    assert progress_monitor(None) is None  # the default: no progress into a log
    assert progress_monitor(False) is None
    lines = progress_monitor(True, description="generating", labels=())
    assert isinstance(lines, LineMonitor) and lines.stream is log and lines.interval == DEFAULT_LINE_INTERVAL_S
    assert lines.description == "generating"

    plain_env.setattr("sys.stderr", Tty())
    assert isinstance(progress_monitor(None), RichMonitor)
    assert isinstance(progress_monitor(True), RichMonitor)
    assert progress_monitor(False) is None


def test_the_interval_comes_from_the_environment_and_a_bad_one_is_named(plain_env):
    assert progress_interval() == DEFAULT_LINE_INTERVAL_S == 30
    plain_env.setenv("REALLOD_PROGRESS_INTERVAL", "0.5")
    assert progress_interval() == 0.5
    plain_env.setattr("sys.stderr", io.StringIO())
    assert progress_monitor(True).interval == 0.5
    for bad in ("soon", "0", "-3", "nan", "inf"):
        plain_env.setenv("REALLOD_PROGRESS_INTERVAL", bad)
        with pytest.raises(ConfigError, match=rf"REALLOD_PROGRESS_INTERVAL='{bad}': expected seconds"):
            progress_interval()
    assert progress_monitor(None) is None and progress_monitor(False) is None  # read only when lines are written
