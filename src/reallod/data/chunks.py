"""Parallel reading of one uncompressed ``.jsonl`` over newline-aligned byte ranges.

``validate`` and ``stats`` are CPU-bound (JSON parsing and per-record checks), so a large file is
cut into byte ranges that each start and end at a line boundary and is read by worker processes.
Line numbers stay exact: a worker numbers its lines from 1 and reports how many physical lines
its range held; the caller adds the line counts of the ranges before it. Results come back in
range order, so anything printed per line stays in line order. Gzip, and a pipe or a device
(``/dev/stdin``, ``<(zcat ...)``: :func:`reallod.data.io.is_stream`), cannot be split this way and
are read sequentially by the callers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from reallod.data.io import BOM, is_stream
from reallod.errors import DataError

MIN_CHUNK_BYTES = 8 << 20  # below two of these a file is read in-process: a pool costs more than it saves
CHUNKS_PER_WORKER = 4  # more ranges than workers, so one slow range does not idle the others
_BUFFER = 1 << 20

R = TypeVar("R")


def default_workers() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def plan_ranges(path: str | os.PathLike, parts: int, *, min_bytes: int = MIN_CHUNK_BYTES) -> list[tuple[int, int]]:
    """Cut the file into at most ``parts`` ranges ``[start, end)``, each beginning at a line start.

    Ranges are at least ``min_bytes`` long (except a short last one); an empty file gives ``[(0, 0)]``.
    A pipe or a device is refused: it has no size, and what one reader takes the others never see.
    """
    if is_stream(path):
        raise DataError("not a regular file (a pipe or a device): it cannot be cut into byte ranges; "
                        "read it in order (reallod.data.io.iter_lines)", path=os.fspath(path))
    size = os.path.getsize(path)
    parts = max(1, min(parts, size // max(1, min_bytes)))
    if parts == 1:
        return [(0, size)]
    bounds = [0]
    with open(path, "rb") as f:
        for i in range(1, parts):
            target = size * i // parts
            if target <= bounds[-1]:
                continue
            f.seek(target - 1)
            f.readline()  # finish the line that holds byte target-1: the next line starts after it
            pos = f.tell()
            if pos >= size:
                break
            if pos > bounds[-1]:
                bounds.append(pos)
    bounds.append(size)
    return list(itertools.pairwise(bounds))


class RangeLines:
    """Iterate ``(line number within the range, raw line)`` over ``[start, end)``, skipping blank lines.

    The raw line keeps its ``\\n`` / ``\\r\\n`` (JSON parsers treat them as whitespace, and not
    stripping saves a copy per line). After iteration ``lines`` is the number of physical lines,
    blank ones included, which is what the next range's numbering must be offset by. A UTF-8
    byte-order mark opening the file is read past, as :func:`reallod.data.io.iter_lines` does, unless
    ``keep_bom`` (validation reports it).
    """

    def __init__(self, path: str | os.PathLike, start: int, end: int, *, keep_bom: bool = False) -> None:
        self.path, self.start, self.end = os.fspath(path), start, end
        self.keep_bom = keep_bom
        self.lines = 0

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        remaining = self.end - self.start
        lineno = 0
        with open(self.path, "rb", buffering=_BUFFER) as f:
            f.seek(self.start)
            while remaining > 0:
                line = f.readline(remaining)
                if not line:  # the file shrank under us
                    break
                remaining -= len(line)
                lineno += 1
                if lineno == 1 and self.start == 0 and not self.keep_bom:
                    line = line.removeprefix(BOM)
                if line and not line.isspace():
                    yield lineno, line
        self.lines = lineno


def map_ranges(func: Callable[[tuple[Any, ...]], R], jobs: Iterable[tuple[Any, ...]], workers: int) -> Iterator[R]:
    """``func`` over ``jobs`` in worker processes, results in job order (in-process when ``workers <= 1``).

    ``func`` must be a module-level function (it is pickled by name). Workers are forked where the
    platform allows it: they start in milliseconds and share the parent's imported modules. They ignore
    Ctrl-C (:func:`_worker_signals`): the parent stops them.
    """
    jobs = list(jobs)
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield func(job)
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    pool = ctx.Pool(min(workers, len(jobs)), initializer=_worker_signals, initargs=(os.getpid(),))
    try:
        yield from pool.imap(func, jobs)
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def _worker_signals(parent: int) -> None:
    """Ctrl-C goes to the whole process group: a worker that took it printed its own traceback of a
    KeyboardInterrupt, one per worker, before the parent said "interrupted". The parent alone handles
    it and terminates the pool with SIGTERM, which must end a worker, not run the handler the parent
    installed and the fork copied (:func:`reallod.cli.sigterm_as_ctrl_c`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _end_with_parent(parent)


def _end_with_parent(parent: int) -> None:
    """A parent killed with ``kill -9`` cannot terminate its pool: on Linux the kernel then sends each
    worker SIGTERM (``PR_SET_PDEATHSIG``), instead of the worker finishing its range and printing a
    broken-pipe traceback. Elsewhere, nothing."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
