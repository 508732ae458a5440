"""Append-only journal of finished tasks: the run's memory across crashes.

A task counts as done only once its line is on disk (written and fsync'ed). The first line is a
header with the run's fingerprint, so a rerun against a changed config or input is refused instead of
silently mixing results. A crash can leave at most one partial last line; it is cut off on resume.
Appends from many coroutines are batched into one write + fsync (group commit), so durability does
not cost one disk flush per task.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from reallod.errors import ReallodError

JOURNAL_VERSION = 1


class JournalMismatch(ReallodError):
    """The journal was started by a run with another config or input."""


class JournalWriteError(ReallodError):
    """The disk refused a journal write (full, read-only, gone)."""


def fingerprint_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """Content hash of an input or config file (blake2b, fast enough for multi-GB inputs)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint(parts: dict[str, Any]) -> str:
    return hashlib.blake2b(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS), digest_size=16).hexdigest()


class Journal:
    """``Journal.open(path, fp)`` loads what a previous run finished and appends new results."""

    def __init__(self, path: Path, fp: dict[str, Any], done: dict[str, dict[str, Any]], fd: int) -> None:
        self.path = path
        self.fingerprint = fp
        self.done = done  # task_id → result dict, in journal order
        self._fd = fd
        self._pending: list[tuple[str, dict[str, Any], asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None

    @classmethod
    def open(cls, path: str | os.PathLike, fp: dict[str, Any], *, force: bool = False) -> Journal:
        """Open or create; refuses a journal with another fingerprint unless ``force``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        done: dict[str, dict[str, Any]] = {}
        if path.exists() and path.stat().st_size > 0:
            header, done, good_bytes = _load(path)
            if header.get("fingerprint") != fp and not force:
                changed = sorted(k for k in set(fp) | set(header.get("fingerprint", {}))
                                 if fp.get(k) != header.get("fingerprint", {}).get(k))
                raise JournalMismatch(
                    f"{path}: this journal was started with a different {', '.join(changed) or 'setup'}; "
                    "rerun with the original config and input, pass --force-resume to continue anyway, "
                    "or delete the journal to start over")
            with open(path, "r+b") as f:  # cut a partial last line left by a crash
                f.truncate(good_bytes)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        else:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o644)
            _durable_write(fd, orjson.dumps({"journal": JOURNAL_VERSION, "fingerprint": fp}) + b"\n")
        return cls(path, fp, done, fd)

    def append_sync(self, task_id: str, result: dict[str, Any]) -> None:
        """Write and fsync one result now (for synchronous callers)."""
        if task_id not in self.done:
            _durable_write(self._fd, _line(task_id, result))
            self.done[task_id] = result

    async def append(self, task_id: str, result: dict[str, Any]) -> None:
        """Returns once the result is durable; concurrent appends share one write + fsync.

        Raises :class:`JournalWriteError` when the disk refuses the write; the journal is left as it
        was before the failed batch, so a later resume is exact.
        """
        if task_id in self.done:
            return
        future = asyncio.get_running_loop().create_future()
        self._pending.append((task_id, result, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await future

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let coroutines finishing in the same tick join this batch
        while self._pending:
            batch, self._pending = self._pending, []
            data = b"".join(_line(tid, res) for tid, res, _ in batch)
            try:
                await asyncio.to_thread(_durable_write, self._fd, data)
            except OSError as e:
                err = JournalWriteError(f"{self.path}: cannot write the journal ({e.strerror or e}); "
                                        "the tasks finished so far are safe, rerun to resume")
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            for tid, res, fut in batch:
                self.done.setdefault(tid, res)
                if not fut.done():
                    fut.set_result(None)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_journal(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(header, task_id → result) of a journal, ignoring a partial last line."""
    header, done, _ = _load(Path(path))
    return header, done


def iter_results(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    yield from read_journal(path)[1].values()


def _load(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]], int]:
    """Header, results, and the byte length of the complete lines (a partial tail is not counted)."""
    done: dict[str, dict[str, Any]] = {}
    header: dict[str, Any] | None = None
    good = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break  # partial write from a crash: cut on resume
            good += len(line)
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if header is None:
                if not isinstance(obj, dict) or "journal" not in obj:
                    raise ReallodError(f"{path}: not a reallod journal (its first line is no journal header)")
                header = obj
            elif isinstance(obj, dict) and "task_id" in obj:
                done.setdefault(obj["task_id"], obj["result"])
    if header is None:
        raise ReallodError(f"{path}: not a reallod journal (no header line)")
    return header, done, good


def _line(task_id: str, result: dict[str, Any]) -> bytes:
    return orjson.dumps({"task_id": task_id, "result": result}) + b"\n"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _durable_write(fd: int, data: bytes) -> None:
    """Write and fsync, or leave the file exactly as it was (no torn line in the middle)."""
    size = os.fstat(fd).st_size
    try:
        _write_all(fd, data)
        os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise
