"""Where training numbers go: the console, CSV files and (when the package is installed) TensorBoard.

Training rows go to ``log.csv``, evaluation rows to ``eval.csv``. A CSV's columns are fixed by its
first row, and a resumed run appends to the same file under the same header, after dropping the rows
of the steps it does again (:meth:`MetricsLog.drop_after`).
"""

from __future__ import annotations

import csv
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from reallod.data.io import raise_with_path


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


class MetricsLog:
    """Console + CSV (+ TensorBoard) for the main process; other processes get ``enabled=False``."""

    def __init__(self, work_dir: str | Path, *, enabled: bool = True, tensorboard: bool = True,
                 echo: Callable[[str], None] | None = None) -> None:
        self.enabled = enabled
        self.echo = echo or (lambda s: print(s, file=sys.stderr, flush=True))
        self.work_dir = Path(work_dir)
        self._files: dict[str, tuple[TextIO, csv.DictWriter]] = {}
        self._tb = None
        if enabled and tensorboard and tensorboard_available():
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(work_dir) / "tensorboard"))

    def info(self, message: str) -> None:
        if self.enabled:
            self.echo(message)

    def scalars(self, step: int, values: dict[str, Any], table: str = "train") -> None:
        """One row: to ``log.csv`` (train) or ``eval.csv`` and TensorBoard, and a line to the console."""
        if not self.enabled:
            return
        self._csv(table, {"step": step, **values})
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, int | float):
                    self._tb.add_scalar(f"{table}/{k}", v, step)
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in values.items())
        self.echo(f"{'' if table == 'train' else table + ' '}step {step} {shown}")

    def drop_after(self, step: int) -> None:
        """On resume: the steps after the checkpoint are done again, so their rows go (each CSV rewritten
        atomically; TensorBoard hides the events from ``step + 1`` on). Nothing to do in a new work dir."""
        if not self.enabled:
            return
        found = False
        for table in ("train", "eval"):
            path = self._path(table)
            rows = _read_csv(path)
            if not rows:
                continue
            found = True
            kept = [r for r in rows[1:] if (s := _step(r)) is not None and s <= step]
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "w", newline="") as f:
                csv.writer(f).writerows([rows[0], *kept])
            os.replace(tmp, path)
        if found and self._tb is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb.close()
            self._tb = SummaryWriter(str(self.work_dir / "tensorboard"), purge_step=step + 1)

    def steps(self, table: str) -> set[int]:
        """The steps ``table`` has rows for."""
        return {s for r in _read_csv(self._path(table))[1:] if (s := _step(r)) is not None}

    def rows(self, table: str) -> list[dict[str, str]]:
        """``table``'s rows by column name (``eval.csv``'s: the history a resume rebuilds ``best/`` from)."""
        found = _read_csv(self._path(table))
        return [dict(zip(found[0], r, strict=False)) for r in found[1:] if _step(r) is not None] if found else []

    def _path(self, table: str) -> Path:
        return self.work_dir / ("log.csv" if table == "train" else f"{table}.csv")

    def _csv(self, table: str, row: dict[str, Any]) -> None:
        if table not in self._files:
            path = self._path(table)
            fields = list(row)
            new = not path.is_file() or path.stat().st_size == 0
            if not new:
                with open(path, newline="") as f:
                    fields = next(csv.reader(f), None) or fields
            handle = open(path, "a", newline="")  # noqa: SIM115 - kept open for the run
            writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            self._files[table] = (handle, writer)
        handle, writer = self._files[table]
        try:
            writer.writerow({k: _fmt(v) for k, v in row.items()})
            handle.flush()
        except OSError as e:  # a full disk: the OS's reason, and which file it was for
            raise_with_path(e, self._path(table))

    def close(self) -> None:
        for handle, _ in self._files.values():
            handle.close()
        self._files.clear()
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    return str(v)


def _read_csv(path: Path) -> list[list[str]]:
    """Header and rows (the step first); empty when there is no file yet."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _step(row: list[str]) -> int | None:
    """A row's step; None for a line a kill cut short."""
    try:
        return int(row[0])
    except (IndexError, ValueError):
        return None
