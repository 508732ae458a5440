"""Append-only journal of finished tasks: the run's memory across crashes.

A task counts as done only once its line is on disk (written and fsync'ed). The first line is a
header with the run's fingerprint, so a rerun against a changed config or input is refused instead of
silently mixing results; ``force`` (``--force-resume``) accepts a changed config, never a changed input
(:data:`INPUT_KEYS`): one output never holds the results of two inputs. A crash can leave at most one
partial last line; it is cut off on resume.
One run at a time writes a journal: while it is open, an exclusive lock on ``JOURNAL.lock`` beside it
(:func:`lock_journal`) refuses a second run on the same output at once (both would run every task
and interleave their lines). The OS releases the lock of a killed run; over NFS, whether another host
sees it depends on the mount.
Appends from many coroutines are batched into one write + fsync (group commit), so durability does
not cost one disk flush per task.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import re
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from reallod.data.io import AtomicWriter, iter_lines, writes_through
from reallod.errors import ConfigError, ReallodError
from reallod.runs.settings_diff import diff_settings

JOURNAL_VERSION = 1

INPUT_KEYS: tuple[str, ...] = ("input", "annotations", "shard")  # a shard is a slice of the input
"""Fingerprint keys that name what a run reads (realign's input, the data engine's annotations): a
journal started on another input is refused even with ``force``, since resuming it would mix two
inputs' results in one output."""


class JournalMismatch(ReallodError):
    """The journal was started by a run with another config or input."""


class JournalWriteError(ReallodError):
    """The disk refused a journal write (full, read-only, gone)."""


class JournalBusy(ReallodError):
    """Another run (or another open of this process) is writing the journal."""


def fingerprint_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """Content hash of an input or config file (blake2b, fast enough for multi-GB inputs)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint_path(path: str | os.PathLike) -> str:
    """Content hash of a file, or of every file under a folder with its relative name (a benchmark's
    ground truth can be either)."""
    path = Path(path)
    if not path.is_dir():
        return fingerprint_file(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return fingerprint({str(p.relative_to(path)): fingerprint_file(p) for p in files})


def fingerprint(parts: dict[str, Any]) -> str:
    return hashlib.blake2b(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS), digest_size=16).hexdigest()


def beside(out: str | os.PathLike, suffix: str) -> Path:
    """``OUT.jsonl`` (also ``.jsonl.gz`` and ``.json``) → ``OUT<suffix>``, next to the output: where a
    run keeps what belongs to one output (journal, trace, shards)."""
    out = Path(out)
    name = out.name
    for ending in (".gz", ".jsonl", ".json"):
        name = name.removesuffix(ending)
    return out.with_name(f"{name}{suffix}")


def journal_path_for(out: str | os.PathLike) -> Path:
    """``OUT.jsonl`` → ``OUT.journal.jsonl``."""
    return beside(out, ".journal.jsonl")


def check_journaled_output(out: str | os.PathLike, option: str = "--out") -> None:
    """Refuse a pipe or a device as the output of a run that keeps a journal beside it: the journal (and
    trace) would be made in ``/dev``, and a rerun could not resume from what the reader already took."""
    if writes_through(out):
        raise ConfigError(f"{option} {out} is a pipe or a device: a run keeps its journal beside its output, "
                          "to resume from; give a file, and read it once the run ends")
    if Path(out).name in ("", ".", ".."):  # `--out .`: "PosixPath('.') has an empty name"
        raise ConfigError(f"{option} {out} is a folder: give the path of a file")
    if kind := _run_file(out):
        raise ConfigError(f"{option} {out} is a run's {kind}: the output written there would replace what it "
                          f"holds; give the output's own name (its {kind} is kept beside it)")


def _run_file(path: str | os.PathLike) -> str | None:
    """"journal" or "trace" when ``path`` is an existing file whose first line is one's header (another
    run's finished work: a new output there lost it); None otherwise."""
    if not os.path.isfile(path):
        return None
    try:
        first = next(iter_lines(path), (0, b""))[1]
        header = orjson.loads(first)
    except (ReallodError, OSError, orjson.JSONDecodeError):
        return None
    if not isinstance(header, dict):
        return None
    return "journal" if "journal" in header else "trace" if "trace" in header else None


class Journal:
    """``Journal.open(path, fp)`` loads what a previous run finished and appends new results."""

    def __init__(self, path: Path, fp: dict[str, Any], done: dict[str, Any], fd: int,
                 header: dict[str, Any] | None = None, lock: JournalLock | None = None) -> None:
        self.path = path
        self.fingerprint = fp
        self.done = done  # task_id → result dict (or what ``keep`` made of it), in journal order
        self.header = header or {"journal": JOURNAL_VERSION, "fingerprint": fp}
        self.resumed = len(done)  # tasks finished by earlier runs
        self.retried = 0  # results dropped at open to be run again (see ``retry``)
        self._fd = fd
        self._lock = lock  # held until close: no other run writes this journal meanwhile
        self._pending: list[tuple[str, dict[str, Any], asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None
        self._fd_lock = threading.Lock()  # a write thread outliving a cancelled flush never meets a closed fd
        self._keep: Callable[[dict[str, Any]], Any] = lambda r: r
        self._before_write: Callable[[], None] | None = None
        self._soon: list[tuple[str, dict[str, Any]]] = []  # buffered by append_soon
        self._last_sync = time.monotonic()

    @classmethod
    def open(cls, path: str | os.PathLike, fp: dict[str, Any], *, force: bool = False,
             meta: dict[str, Any] | None = None, keep: Callable[[dict[str, Any]], Any] | None = None,
             before_write: Callable[[], None] | None = None,
             retry: Callable[[dict[str, Any]], bool] | None = None, lock: JournalLock | None = None) -> Journal:
        """Open or create; refuses a journal with another fingerprint unless ``force``, and one started
        on another input (:data:`INPUT_KEYS`) always.

        ``meta`` goes into the header of a new journal (what a merge needs to know: input, shard...);
        ``keep`` maps each loaded result to what ``done`` holds (a run over millions of tasks only
        needs to know which ids are done, not their whole results); ``before_write`` runs before each
        write (the response cache commits there, so a task called done has its answers kept);
        results for which ``retry`` is true (a task that failed: the server was down, the image root
        wrong) are taken out of the journal, so this run does them again, as whoever reruns expects
        (``retry`` picks only tasks this run runs: a result taken out and not run again would be lost,
        and one of a task it leaves out stays for a later run).
        ``lock``: this journal's, taken by the caller (:func:`lock_journal`) to look at or replace the
        journal before opening it; the journal holds it from then on (released by :meth:`close`, or here
        on failure).
        """
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = lock or lock_journal(path)  # before reading: another run's lines are not ours to cut or drop
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        try:
            journal = cls._open_locked(path, fp, force, meta, keep, retry, lock)
        except BaseException:
            lock.release()
            raise
        if keep is not None:
            journal._keep = keep
        journal._before_write = before_write
        return journal

    @classmethod
    def _open_locked(cls, path: Path, fp: dict[str, Any], force: bool, meta: dict[str, Any] | None,
                     keep: Callable[[dict[str, Any]], Any] | None, retry: Callable[[dict[str, Any]], bool] | None,
                     lock: JournalLock) -> Journal:
        fp = orjson.loads(orjson.dumps(fp))  # as the header reads back (tuples become lists), or no resume matches
        done: dict[str, Any] = {}
        again: set[str] = set()
        header: dict[str, Any] = {"journal": JOURNAL_VERSION, "fingerprint": fp, **({"meta": meta} if meta else {})}
        loaded = _load(path, keep, retry) if path.exists() and path.stat().st_size > 0 else None
        if loaded is not None and loaded[0].get("fingerprint") != fp and set(loaded[1]) <= loaded[3]:
            loaded = None  # another setup's journal without a finished task: nothing to keep, nothing to mix
        if loaded is not None:
            header, done, good_bytes, again = loaded
            _check_fingerprint(path, header, fp, force, meta)
            if again:
                try:
                    _drop(path, again)
                except OSError as e:
                    raise JournalWriteError(f"{path}: cannot write the journal ({e.strerror or e})") from e
                for tid in again:
                    del done[tid]
            else:
                with open(path, "r+b") as f:  # cut a partial last line left by a crash
                    f.truncate(good_bytes)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        else:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _durable_write(fd, orjson.dumps(header) + b"\n")
            except OSError as e:
                os.close(fd)
                raise JournalWriteError(f"{path}: cannot write the journal ({e.strerror or e})") from e
        journal = cls(path, fp, done, fd, header, lock)
        journal.retried = len(again)
        return journal

    @classmethod
    def rewrite(cls, path: str | os.PathLike, fp: dict[str, Any], results: Iterable[tuple[str, dict[str, Any]]],
                *, keep: Callable[[dict[str, Any]], Any] | None = None, lock: JournalLock | None = None) -> Journal:
        """A journal of these settings holding exactly ``results`` (first result of a task counts), in
        place of whatever ``path`` held, open for appends: written aside and renamed over it, so a crash
        leaves one journal or the other, never a mix. For a run whose outputs can change under an old
        journal (files rewritten since), which keeps only the results it checked. ``lock``: as for
        :meth:`open` (``results`` may then read the journal being replaced)."""
        path = Path(path)
        fp = orjson.loads(orjson.dumps(fp))
        header: dict[str, Any] = {"journal": JOURNAL_VERSION, "fingerprint": fp}
        keep = keep or (lambda r: r)
        done: dict[str, Any] = {}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = lock or lock_journal(path)
        except OSError as e:
            if lock is not None:
                lock.release()
            raise JournalWriteError(f"{path}: cannot write the journal ({e.strerror or e})") from e
        try:
            with AtomicWriter(path) as w:
                w.write(orjson.dumps(header) + b"\n")
                for tid, res in results:
                    if tid not in done:
                        w.write(_line(tid, res))
                        done[tid] = keep(res)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        except BaseException as e:
            lock.release()
            if isinstance(e, OSError):
                raise JournalWriteError(f"{path}: cannot write the journal ({e.strerror or e})") from e
            raise
        journal = cls(path, fp, done, fd, header, lock)
        journal._keep = keep
        return journal

    def append_sync(self, task_id: str, result: dict[str, Any]) -> None:
        """Write and fsync one result now (for synchronous callers)."""
        self.append_soon(task_id, result, within_s=0.0)

    def append_soon(self, task_id: str, result: dict[str, Any], *, within_s: float = 2.0) -> None:
        """Buffer one result; the buffer is written with one fsync once ``within_s`` has passed since the
        last write (a synchronous caller's group commit: a crash loses at most that much work, and
        :meth:`flush_sync` or :meth:`close` writes the rest)."""
        self._soon.append((task_id, result))
        if time.monotonic() - self._last_sync >= within_s:
            self.flush_sync()

    def flush_sync(self) -> None:
        new: dict[str, dict[str, Any]] = {}
        for tid, res in self._soon:
            if tid not in self.done:
                new.setdefault(tid, res)  # the first result of a task counts, as on disk
        self._soon = []
        if new:
            try:
                self._locked_write(b"".join(_line(tid, res) for tid, res in new.items()))
            except OSError as e:  # the journal is left as it was: those tasks are run again on resume
                raise JournalWriteError(f"{self.path}: cannot write the journal ({e.strerror or e}); the tasks "
                                        "recorded before are safe, rerun to resume") from e
            for tid, res in new.items():
                self.done[tid] = self._keep(res)
        self._last_sync = time.monotonic()

    async def append(self, task_id: str, result: dict[str, Any]) -> None:
        """Returns once the result is durable; concurrent appends share one write + fsync. What belongs
        with a result (its trace line) is written before it: a line the journal lacks is dropped on resume.

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
                await asyncio.to_thread(self._locked_write, data)
            except OSError as e:
                err = JournalWriteError(f"{self.path}: cannot write the journal ({e.strerror or e}); "
                                        "the tasks finished so far are safe, rerun to resume")
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            for tid, res, fut in batch:
                if tid not in self.done:
                    self.done[tid] = self._keep(res)
                if not fut.done():
                    fut.set_result(None)

    def _locked_write(self, data: bytes) -> None:
        if self._before_write is not None:
            self._before_write()
        with self._fd_lock:
            if self._fd < 0:
                raise OSError(9, "journal already closed")
            _durable_write(self._fd, data)

    async def drain(self) -> None:
        """Wait for the write in progress (if any): call before closing from async code."""
        if self._flusher is not None and not self._flusher.done():
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._flusher

    def keep_lock(self) -> JournalLock | None:
        """The lock, which :meth:`close` then leaves held: the caller releases it once it has written
        what it makes of the journal (no second run resumes into an output being assembled)."""
        lock, self._lock = self._lock, None
        return lock

    def close(self) -> None:
        """Writes what :meth:`append_soon` buffered, then closes."""
        try:
            if self._soon and self._fd >= 0:
                self.flush_sync()
        finally:
            self._close_fd()

    def _close_fd(self) -> None:
        with self._fd_lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            if self._lock is not None:  # after the last write
                self._lock.release()
                self._lock = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def lock_path_for(journal: str | os.PathLike) -> Path:
    """``OUT.journal.jsonl`` → ``OUT.journal.jsonl.lock``: a file of its own, since the journal itself is
    replaced (renamed over) by :meth:`Journal.rewrite` and when failed results are dropped."""
    journal = Path(journal)
    return journal.with_name(journal.name + ".lock")


class JournalLock:
    """An exclusive ``flock`` on the lock file beside a journal, which names its holder (pid, host)."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self._fd = fd  # None: the filesystem knows no locks, nothing is held
        if fd is not None:
            _HELD.add(self)

    def release(self) -> None:
        """Removed while still held, so a run that opened it meanwhile sees it gone and takes a new one."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None


_HELD: weakref.WeakSet[JournalLock] = weakref.WeakSet()


def _not_in_a_child() -> None:
    """A forked child (a DataLoader worker, a pool process) gets a copy of each lock's descriptor, and a
    ``flock`` lasts while any copy is open: killed with ``kill -9``, the run's workers outlived it by
    seconds, holding its lock, and the rerun was refused naming a dead process. The child closes its
    copies (never unlocks: the lock is the parent's) and forgets them."""
    for lock in list(_HELD):
        fd, lock._fd = lock._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_not_in_a_child)


def lock_journal(journal: str | os.PathLike) -> JournalLock:
    """Lock ``journal`` for this run, or raise :class:`JournalBusy` at once naming the run holding it.
    A lock is the kernel's, on an open file: it goes with the process (``kill -9`` included), and two
    opens in one process are two holders too. Taken by a caller that looks at or replaces the journal
    before opening it, and handed to :meth:`Journal.open` or :meth:`Journal.rewrite` (``lock=``); its
    folder must exist."""
    journal = Path(journal)
    path = lock_path_for(journal)
    for _ in range(100):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            why = _busy(journal, fd)
            os.close(fd)
            raise JournalBusy(why) from None
        except OSError:  # a filesystem without locks (some network mounts): run as before, unguarded
            os.close(fd)
            return JournalLock(path, None)
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                _write_all(fd, f"{os.getpid()} {_HOST}\n".encode())
            return JournalLock(path, fd)
        os.close(fd)  # its holder ended and removed it meanwhile: lock the one there now
    raise JournalBusy(f"{journal}: its lock file {path} keeps being replaced; is another run starting and "
                      "stopping on this output?")


_HOST = socket.gethostname()


def lock_holder(journal: str | os.PathLike) -> str:
    """`` (pid N)``, or `` (pid N on HOST)`` for another host's, of the run holding ``journal``'s lock, by
    what it wrote in the lock file; "" when that cannot be read."""
    try:
        return _holder(lock_path_for(journal).read_bytes())
    except OSError:
        return ""


def _holder(written: bytes) -> str:
    pid, _, host = written.decode(errors="replace").strip().partition(" ")
    return f" (pid {pid}{'' if host == _HOST else f' on {host}'})" if pid.isdigit() else ""


def _busy(journal: Path, fd: int) -> str:
    """Why a journal cannot be opened: who holds its lock, by the pid and host it wrote there."""
    try:
        written = os.pread(fd, 512, 0)
    except OSError:
        written = b""
    if written.decode(errors="replace").strip() == f"{os.getpid()} {_HOST}":
        return (f"{journal}: this process (pid {os.getpid()}) has this journal open already: close it before "
                "opening it again")
    who = f"another run{_holder(written)}"
    return (f"{journal}: {who} is writing this journal; wait for it to finish, or give this run another output "
            "(two runs on one output would both run every task and mix their lines)")


def _check_fingerprint(path: Path, header: dict[str, Any], fp: dict[str, Any], force: bool,
                       meta: dict[str, Any] | None = None) -> None:
    """Refuse another setup's journal: any change unless ``force``; a changed input always. The
    ``settings`` both metas keep (a config's, readable) name what in it changed."""
    before = header.get("fingerprint")
    before = before if isinstance(before, dict) else {}
    if before == fp:
        return
    changed = sorted(k for k in set(fp) | set(before) if fp.get(k) != before.get(k))
    inputs = [k for k in changed if k in INPUT_KEYS]
    if inputs:
        meta = header.get("meta") if isinstance(header.get("meta"), dict) else {}
        was = next((str(meta[k]) for k in inputs if meta.get(k)), None)
        also = [k for k in changed if k not in inputs]
        raise JournalMismatch(
            f"{path}: this journal was started on a different {inputs[0]}"
            + (f" (the journal's: {was}, with the content it had then)" if was else "")
            + (f" (also changed: {', '.join(also)})" if also else "")
            + "; its results cannot be resumed on this one, not even with --force-resume (one output never "
            "mixes two inputs): write this run to another --out, or delete the journal to start over")
    if not force:
        said = ", ".join(_change(k, before.get(k), fp.get(k)) for k in changed)
        old_meta = header.get("meta") if isinstance(header.get("meta"), dict) else {}
        was, now = old_meta.get("settings"), (meta or {}).get("settings")
        if isinstance(was, dict) and isinstance(now, dict) and (named := diff_settings(was, now)):
            said += " (" + ", ".join(_change(c.key, c.was, c.now) for c in named) + ")"
        raise JournalMismatch(
            f"{path}: this journal was started with a different {said or 'setup'}; "
            "rerun with the original config and options, pass --force-resume to continue anyway, "
            "or delete the journal to start over")


def _change(key: str, was: Any, now: Any) -> str:
    """A changed setting as a message names it: with its values where they say something (``max_cycles (3
    in the journal, 1 now)``), not where they are content hashes."""
    def plain(v: Any) -> bool:
        return isinstance(v, int | float) or (isinstance(v, str) and len(v) <= 40
                                                            and not re.fullmatch(r"[0-9a-f]{16,}", v))
    return f"{key} ({was} in the journal, {now} now)" if plain(was) and plain(now) else key


def read_journal(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(header, task_id → result) of a journal, ignoring a partial last line."""
    header, done, _, _ = _load(Path(path))
    return header, done


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The header line alone (cheap, whatever the journal's size)."""
    path = Path(path)
    with open(path, "rb") as f:
        first = f.readline()
    try:
        obj = orjson.loads(first)
    except orjson.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict) or "journal" not in obj:
        raise ReallodError(f"{path}: not a reallod journal (its first line is no journal header)")
    return obj


def file_stamp(path: str | os.PathLike | None) -> list[int] | None:
    """An input file's size and modification time (ns), None when it cannot be looked at: kept in a journal
    entry (one ``stat``), it tells a file replaced under the same name from the one the entry was made of."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def iter_journal(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, Any]]]:
    """(task_id, result) of every finished task, first occurrence only, streaming (constant memory
    but for the set of ids)."""
    seen: set[str] = set()
    lines = _lines(Path(path))
    next(lines)  # the header
    for obj in lines:
        tid = obj["task_id"]
        if tid not in seen:
            seen.add(tid)
            yield tid, obj["result"]


def _lines(path: Path, _good: list[int] | None = None) -> Iterator[dict[str, Any]]:
    """Task lines after checking the header; ``_good`` receives the byte length of complete lines."""
    header_seen = False
    good = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break  # partial write from a crash: cut on resume
            good += len(line)
            if _good is not None:
                _good[0] = good
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if not header_seen:
                if not isinstance(obj, dict) or "journal" not in obj:
                    raise ReallodError(f"{path}: not a reallod journal (its first line is no journal header)")
                header_seen = True
                yield obj
            elif isinstance(obj, dict) and isinstance(obj.get("task_id"), str) and isinstance(obj.get("result"), dict):
                yield obj  # a line of another shape (edited by hand) is passed over as a torn one: not done
    if not header_seen:
        raise ReallodError(f"{path}: not a reallod journal (no header line)")


def _load(path: Path, keep: Callable[[dict[str, Any]], Any] | None = None,
          retry: Callable[[dict[str, Any]], bool] | None = None
          ) -> tuple[dict[str, Any], dict[str, Any], int, set[str]]:
    """Header, results, the byte length of the complete lines (a partial tail is not counted) and the
    ids whose result ``retry`` wants run again."""
    done: dict[str, Any] = {}
    again: set[str] = set()
    good = [0]
    lines = _lines(path, good)
    header = next(lines)
    for obj in lines:
        if obj["task_id"] not in done:
            done[obj["task_id"]] = obj["result"] if keep is None else keep(obj["result"])
            if retry is not None and retry(obj["result"]):
                again.add(obj["task_id"])
    return header, done, good[0], again


def _drop(path: Path, ids: set[str]) -> None:
    """Rewrite the journal without the lines of ``ids`` (and without a torn tail): written aside and
    renamed over it, so a crash leaves the old journal or the new one."""
    with open(path, "rb") as f, AtomicWriter(path) as w:
        w.write(f.readline())  # the header
        for line in f:
            if not line.endswith(b"\n"):
                break  # a torn tail
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if not (isinstance(obj, dict) and obj.get("task_id") in ids):
                w.write(line)


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
