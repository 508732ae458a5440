"""Watching a run: a progress bar while it goes.

The runner reports to a :class:`RunMonitor` (no-op by default, so library use prints nothing);
:class:`RichMonitor` draws tasks done / total, tasks per second and ETA (from this session's pace,
not counting resumed tasks), requests in flight and the running count of each outcome (verdicts, for re-alignment).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence

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

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.done = 0

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.done / elapsed if elapsed > 0 and self.done else 0.0


class _RateColumn(ProgressColumn):
    def __init__(self, pace: _Pace) -> None:
        super().__init__()
        self.pace = pace

    def render(self, task: Task) -> Text:
        rate = self.pace.rate()
        left = (task.total - task.completed) if task.total is not None else None
        eta = "?" if not rate or left is None else _clock(left / rate)
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


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
