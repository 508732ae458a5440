"""Watching a run: a progress bar while it goes, or a plain line now and then in a log.

The runner reports to a :class:`RunMonitor` (no-op by default, so library use prints nothing);
:class:`RichMonitor` draws tasks done / total, tasks per second and ETA (from this session's pace,
not counting resumed tasks), requests in flight and the running count of each outcome (verdicts, for re-alignment).
:class:`LineMonitor` writes the same as one plain line every ``interval`` seconds, for a stderr that is
no terminal (a SLURM or nohup log): Rich's live display draws nothing there until the run ends.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn
from rich.text import Text


class RunMonitor:
    """What a run tells whoever watches it. The base class ignores everything."""

    def start(self, *, resumed: int) -> None:
        """The run begins; ``resumed`` tasks were finished by earlier runs of the same job."""

    def set_total(self, total: int, *, resumed: int | None = None) -> None:
        """How many tasks this run covers (resumed ones included), once counted; ``resumed``: how many of
        them earlier runs finished, when that is not all the journal holds (a smaller ``--limit``)."""

    def task_done(self, verdict: str) -> None:
        """One more task finished in this run."""

    def stop(self) -> None:
        """The run ended (normally or not)."""


class _Pace:
    """Tasks per second and ETA over this session only (resumed tasks would fake the speed)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.started = clock()
        self.done = 0

    def elapsed(self) -> float:
        return self.clock() - self.started

    def rate(self) -> float:
        elapsed = self.elapsed()
        return self.done / elapsed if elapsed > 0 and self.done else 0.0


class _RateColumn(ProgressColumn):
    def __init__(self, pace: _Pace) -> None:
        super().__init__()
        self.pace = pace

    def render(self, task: Task) -> Text:
        rate = self.pace.rate()
        left = (task.total - task.completed) if task.total is not None else None
        eta = "?" if not rate or left is None else clock_text(left / rate)
        return Text(f"{rate:6.1f} tasks/s  ETA {eta}", style="progress.data.speed")


class _LiveColumn(ProgressColumn):
    def __init__(self, in_flight: Callable[[], int], verdicts: Counter[str], labels: Sequence[str] | None) -> None:
        super().__init__()
        self.in_flight = in_flight
        self.verdicts = verdicts
        self.labels = labels

    def render(self, task: Task) -> Text:
        shown = self.verdicts if self.labels is None else self.labels
        counts = " ".join(f"{v} {self.verdicts[v]}" for v in shown if self.verdicts[v])
        return Text(f"in flight {self.in_flight():3d}  {counts}")


class RichMonitor(RunMonitor):
    """A live progress bar on ``console`` (stderr by default); ``labels`` are the outcomes it counts
    aloud, in that order (None: every outcome, as first seen)."""

    def __init__(self, console: Console | None = None, *, in_flight: Callable[[], int] = lambda: 0,
                 description: str = "re-aligning", labels: Sequence[str] | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.verdicts: Counter[str] = Counter()
        self.pace = _Pace()
        self.in_flight = in_flight
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(),
            TextColumn("{task.completed}/{task.fields[total_text]}"), _RateColumn(self.pace),
            _LiveColumn(lambda: self.in_flight(), self.verdicts, labels),
            console=self.console, refresh_per_second=4, transient=False)
        self._task = self._progress.add_task(description, total=None, total_text="?")

    def start(self, *, resumed: int) -> None:
        self.pace = _Pace()
        for column in self._progress.columns:
            if isinstance(column, _RateColumn):
                column.pace = self.pace
        self._progress.update(self._task, completed=resumed)
        self._progress.start()

    def set_total(self, total: int, *, resumed: int | None = None) -> None:
        if resumed is not None:  # a task finishing while the count passed it is in both: never past the total
            self._progress.update(self._task, completed=min(total, resumed + self.pace.done))
        self._progress.update(self._task, total=total, total_text=str(total))

    def task_done(self, verdict: str) -> None:
        self.verdicts[verdict] += 1
        self.pace.done += 1
        self._progress.advance(self._task)

    def stop(self) -> None:
        self._progress.stop()


DEFAULT_LINE_INTERVAL_S = 30.0


class LineMonitor(RunMonitor):
    """One plain line on ``stream`` every ``interval`` seconds while the run goes, and one when it ends:
    ``re-aligning: 12,345/1,000,000 tasks (1.2%)  85.2 tasks/s  ETA 3:13:00  in flight 64  correct 10,000 ...``.

    For a stderr that is no terminal (a SLURM or nohup log), where a live bar shows nothing until the end.
    A daemon thread writes the lines (so a run whose tasks all wait still shows it is alive), flushed
    each time; finishing a task only counts it, under a lock (the thread reads the counts). Lines that
    cannot be written (a closed log) are dropped: watching never stops the run. ``clock`` is for tests."""

    def __init__(self, stream: TextIO, *, in_flight: Callable[[], int] = lambda: 0,
                 description: str = "re-aligning", labels: Sequence[str] | None = None,
                 interval: float = DEFAULT_LINE_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval}")
        self.stream = stream
        self.in_flight = in_flight
        self.description = description
        self.labels = labels
        self.interval = interval
        self.clock = clock
        self.verdicts: Counter[str] = Counter()
        self.pace = _Pace(clock)
        self.completed = 0
        self.total: int | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, *, resumed: int) -> None:
        with self._lock:
            self.pace = _Pace(self.clock)
            self.completed = resumed
        self._stopped.clear()
        self._thread = threading.Thread(target=self._every_interval, name="reallod-progress", daemon=True)
        self._thread.start()

    def set_total(self, total: int, *, resumed: int | None = None) -> None:
        with self._lock:
            if resumed is not None:  # a task finishing while the count passed it is in both: never past the total
                self.completed = min(total, resumed + self.pace.done)
            self.total = total

    def task_done(self, verdict: str) -> None:
        with self._lock:
            self.verdicts[verdict] += 1
            self.pace.done += 1
            self.completed += 1

    def stop(self) -> None:
        if self._thread is None:  # never started, or stopped already: one final line per run
            return
        self._stopped.set()
        self._thread.join()
        self._thread = None
        write_line(self.stream, self.line(final=True))

    def line(self, *, final: bool = False) -> str:
        """The progress as one line; ``final``: the run's time instead of the ETA."""
        with self._lock:
            done, total, rate, elapsed = self.completed, self.total, self.pace.rate(), self.pace.elapsed()
            counts = dict(self.verdicts)
        of = f"{done:,}/{total:,} tasks" if total is not None else f"{done:,}/? tasks"
        if total:
            of += f" ({100 * done / total:.1f}%)"
        if final:
            when = f"took {clock_text(elapsed)}"
        else:
            when = "ETA " + (clock_text((total - done) / rate) if rate and total is not None else "?")
        shown = counts if self.labels is None else self.labels
        outcomes = " ".join(f"{v} {counts[v]:,}" for v in shown if counts.get(v))
        parts = [f"{self.description}: {of}", f"{rate:.1f} tasks/s", when, f"in flight {self.in_flight()}"]
        return "  ".join(parts) + (f"  {outcomes}" if outcomes else "")

    def _every_interval(self) -> None:
        while not self._stopped.wait(self.interval):
            write_line(self.stream, self.line())


def write_line(stream: TextIO, line: str) -> None:
    """``line`` written and flushed to a log, or dropped when it cannot be (a closed or full log):
    progress is no reason to stop the work."""
    try:
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass


def clock_text(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
