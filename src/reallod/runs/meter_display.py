"""Showing a data command's :class:`~reallod.data.meter.Meter`: a bar on a terminal, a line now and then in a log.

``reallod data convert`` over a few GB of Real-Data runs for minutes: :class:`RichMeter` draws the
bytes read of the size (the compressed size, for gzip), the speed and the time left, one bar per
phase, removed once the command ends (its summary follows). :class:`LineMeter` writes the same as one
plain line every ``interval`` seconds into a stderr that is no terminal, where a live bar draws nothing;
a command shorter than the interval writes none.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from rich.console import Console
from rich.filesize import decimal
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn, TimeRemainingColumn
from rich.text import Text

from reallod.data.meter import BYTES, Meter
from reallod.runs.progress import DEFAULT_LINE_INTERVAL_S, clock_text, write_line


def amount_text(done: float, total: float | None, unit: str) -> str:
    """``120.0 MB/268.4 MB (44.7%)``, ``81,920/1,052,114 boxes + images (7.8%)``, or without a total
    (a pipe) only what was done."""
    def size(n: float) -> str:
        return decimal(int(n)) if unit == BYTES else f"{int(n):,}"

    text = size(done) if total is None else f"{size(done)}/{size(total)}"
    if unit != BYTES:
        text += f" {unit}"
    return text + (f" ({100 * done / total:.1f}%)" if total else "")


def rate_text(rate: float, unit: str) -> str:
    """``22.1 MB/s`` or ``35,012/s``."""
    return f"{decimal(int(rate))}/s" if unit == BYTES else f"{rate:,.0f}/s"


class _AmountColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        unit = task.fields["unit"]
        speed = task.finished_speed or task.speed
        rate = f"  {rate_text(speed, unit)}" if speed else ""
        return Text(amount_text(task.completed, task.total, unit) + rate, style="progress.data.speed")


class RichMeter(Meter):
    """A bar per phase on ``console`` (stderr), gone when the command ends. ``stdout_too``: the command
    also writes on stdout and it is the same terminal, so its lines are put above the bar instead of
    through it (a stdout that is a file keeps what is written to it). Stderr is left as it is: worker
    processes forked while the bar's thread held the console's lock would wait on it for ever to warn."""

    active = True

    def __init__(self, console: Console, description: str, *, stdout_too: bool = False) -> None:
        self.description = description
        self._progress = Progress(
            TextColumn("{task.description}", style="bold", markup=False),  # file names: "[x]" is no tag
            BarColumn(), _AmountColumn(), TimeRemainingColumn(),
            console=console, transient=True, redirect_stdout=stdout_too, redirect_stderr=False)
        self._task: TaskID | None = None
        self._done = 0
        self._total: int | None = None

    def phase(self, what: str, total: int | None, unit: str = BYTES) -> None:
        if self._task is None:
            self._progress.start()
        self._task = self._progress.add_task(f"{self.description}: {what}", total=total, unit=unit)
        self._done, self._total = 0, total

    def advance(self, n: int) -> None:
        if self._task is None:
            return
        self._done += n  # a look at a file's head may be read again: never past the total
        self._progress.update(self._task, completed=self._done if self._total is None else min(self._done, self._total))

    def stop(self) -> None:
        self._progress.stop()


class LineMeter(Meter):
    """``reallod data convert: reading x.jsonl 1.2 GB/5.0 GB (24.0%)  20.1 MB/s  ETA 3:09`` every
    ``interval`` seconds, written as the reading reports (no thread: a command that reads nothing for a
    while writes nothing). Lines that cannot be written are dropped: watching never stops the command.
    ``clock`` is for tests."""

    active = True

    def __init__(self, stream: TextIO, description: str, *, interval: float = DEFAULT_LINE_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval}")
        self.stream, self.description, self.interval, self.clock = stream, description, interval, clock
        self.what, self.unit = "", BYTES
        self.total: int | None = None
        self.done = 0
        self.started = self.next_line = clock()

    def phase(self, what: str, total: int | None, unit: str = BYTES) -> None:
        self.what, self.total, self.unit, self.done = what, total, unit, 0
        self.started = self.clock()
        self.next_line = self.started + self.interval

    def advance(self, n: int) -> None:
        self.done = self.done + n if self.total is None else min(self.done + n, self.total)
        now = self.clock()
        if now >= self.next_line:
            self.next_line = now + self.interval
            write_line(self.stream, self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = (self.clock() if now is None else now) - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = self.total - self.done if self.total is not None else None
        eta = clock_text(left / rate) if rate and left is not None else "?"
        return (f"{self.description}: {self.what} {amount_text(self.done, self.total, self.unit)}  "
                f"{rate_text(rate, self.unit)}  ETA {eta}")
