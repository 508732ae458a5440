"""The trace file: one JSON line per finished task, written as tasks finish, read by everything after.

The first line is a header (``"trace": TRACE_VERSION``, input, image root, config, roles); each further
line holds the task (or the input problem that stood in for it) and its full result: every role call
with the values its template was rendered with, its prompt, view and crop box, raw response, parsed
decision, latency and tokens. Images inside prompts are not
stored: an image part becomes ``{"type": "image", "image": {"size": [w, h]}}`` and the report
re-renders the view from the task's image and the recorded view name and crop box.

The trace of a ``.gz`` output is gzipped (``OUT.trace.jsonl.gz``): its prompts repeat from line to line,
so it is about a twelfth of the size (the bundled example). Each line is flushed with a sync point, so a reader gets every whole
line while the run goes on or after it was killed (the member then has no end); a resumed run rewrites
it whole (:func:`keep_tasks`) before it appends a new member.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Callable, Container, Iterator
from pathlib import Path
from typing import IO, Any

import orjson
from PIL import Image

from reallod.agent.inputs import TaskItem, TaskProblem
from reallod.agent.task import TaskResult
from reallod.data.io import AtomicWriter, iter_lines, probe_gzip, wants_gzip
from reallod.errors import DataError, ReallodError
from reallod.runs.journal import beside

TRACE_VERSION = 2
"""1: the first format; 2: each step also records ``values``, what its role's template was rendered with
(needed to build fine-tuning data, :mod:`reallod.finetune.sft_data`; the other readers take both)."""


def trace_path_for(out: str | os.PathLike) -> Path:
    """``OUT.jsonl`` → ``OUT.trace.jsonl`` (also for ``.json``), ``OUT.jsonl.gz`` → ``OUT.trace.jsonl.gz``,
    unless a plain trace an earlier version wrote for it is there (a run it resumes goes on with it)."""
    plain = beside(out, ".trace.jsonl")
    if not wants_gzip(out) or plain.is_file():
        return plain
    return beside(out, ".trace.jsonl.gz")


def result_to_json(result: TaskResult) -> dict[str, Any]:
    """The result as plain JSON (what the trace holds)."""
    return orjson.loads(_dumps(_with_error_kind(result)))


def item_to_json(item: TaskItem) -> dict[str, Any]:
    """A task, or the input problem that stood in for it, as plain JSON."""
    if isinstance(item, TaskProblem):
        return {"task_id": item.task_id, "image_path": item.image_path, "raw_expression": item.raw_expression,
                "origin": item.origin, "problem": {"kind": item.kind, "message": item.describe()}}
    return item


class TraceWriter:
    """Appends one line per finished task and flushes it, so the trace can be read while a run goes on.

    ``append=True`` continues an existing trace (a resumed run): a line torn by a crash is cut first (a
    gzip trace is rewritten whole), the lines of tasks not in ``keep`` are dropped (:func:`keep_tasks`;
    the ids kept are :attr:`kept`), and the header is kept. A ``.gz`` path is written gzipped, a new
    member each time it is opened.
    """

    def __init__(self, path: str | os.PathLike, header: dict[str, Any], *, append: bool = False,
                 keep: Container[str] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.count = 0
        self.kept: set[str] = set()
        appending = append and _has_header(self.path)
        if appending:
            if keep is not None or wants_gzip(self.path):  # one scan of a big trace, not two
                self.kept = keep_tasks(self.path, keep)
            if not wants_gzip(self.path):
                _cut_torn_tail(self.path)
        self._raw: IO[bytes] = open(self.path, "ab" if appending else "wb")  # noqa: SIM115 - closed in close()
        self._f: IO[bytes] = (gzip.GzipFile(fileobj=self._raw, mode="wb", mtime=0)
                              if wants_gzip(self.path) else self._raw)
        if not appending:
            self._write({"trace": TRACE_VERSION, **header})

    def write(self, item: TaskItem, result: TaskResult) -> None:
        self._write({"task_id": result.task_id, "task": item_to_json(item), "result": _with_error_kind(result)})
        self.count += 1

    def write_entry(self, entry: dict[str, Any]) -> None:
        """A ready entry (``task_id`` first), e.g. one rebuilt from the journal after a crash."""
        self._write(entry)
        self.count += 1

    def _write(self, obj: dict[str, Any]) -> None:
        self._f.write(_dumps(obj) + b"\n")
        self._f.flush()  # gzip: a sync point, then the file's own flush

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()
        if not self._raw.closed:
            self._raw.close()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_ID = re.compile(rb'^\{"task_id":("(?:[^"\\]|\\.)*")')


def trace_ids(path: str | os.PathLike, cut: list[int] | None = None) -> set[str]:
    """The task ids a trace holds, read from the start of each line only (fast on big traces); ``cut``:
    as :func:`whole_lines`."""
    ids: set[str] = set()
    for line in whole_lines(path, cut):
        if (m := _ID.match(line)) is not None:
            ids.add(orjson.loads(m.group(1)))
    return ids


def whole_lines(path: str | os.PathLike, cut: list[int] | None = None) -> Iterator[bytes]:
    """Each whole line of a trace, plain or gzip, with its newline: not a last line a crash cut short, nor
    the end of a gzip member its writer never closed (the line number it ends after goes into ``cut``).
    An empty file has none (a run killed before its first flush)."""
    if os.path.getsize(path) == 0:
        return
    if probe_gzip(path):
        for _, line in iter_lines(path, on_cut=cut.append if cut is not None else lambda _: None):
            yield line + b"\n"
        return
    with open(path, "rb") as f:
        for line in f:
            if line.endswith(b"\n"):
                yield line


def keep_tasks(path: str | os.PathLike, done: Container[str] | None) -> set[str]:
    """Drop the lines of tasks the journal does not hold (``done``; None keeps every task): failed ones
    it gave back to be run again, whose new line replaces the old, so the trace lists every task once;
    returns the ids it keeps. Rewritten aside and renamed, and only when something goes or a gzip
    trace's writer never closed it (a new member cannot follow an unfinished one)."""
    path = Path(path)
    if not _has_header(path):
        return set()
    cut: list[int] = []
    ids = trace_ids(path, cut)
    kept = ids if done is None else {tid for tid in ids if tid in done}
    if len(kept) == len(ids) and not cut:
        return ids
    with AtomicWriter(path) as w:
        lines = whole_lines(path)
        w.write(next(lines))  # the header
        for line in lines:
            if (m := _ID.match(line)) is not None and orjson.loads(m.group(1)) in kept:
                w.write(line)
    return kept


def _has_header(path: Path) -> bool:
    if not path.is_file():
        return False
    first = next(whole_lines(path), b"")
    try:
        obj = orjson.loads(first)
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and "trace" in obj


def _cut_torn_tail(path: Path) -> None:
    """Drop an incomplete last line (a crash in the middle of a write)."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        pos = size
        while pos > 0:
            step = min(pos, 1 << 16)
            f.seek(pos - step)
            block = f.read(step)
            nl = block.rfind(b"\n")
            if nl >= 0:
                end = pos - step + nl + 1
                if end != size:
                    f.truncate(end)
                return
            pos -= step
        f.truncate(0)


def read_trace(path: str | os.PathLike, on_torn: Callable[[int], None] | None = None
               ) -> tuple[dict[str, Any], Iterator[dict[str, Any]]]:
    """(header, iterator over task entries) of a trace file, as :func:`read_numbered_trace` reads it."""
    header, numbered = read_numbered_trace(path, on_torn)
    return header, (entry for _, entry in numbered)


def read_numbered_trace(path: str | os.PathLike, on_torn: Callable[[int], None] | None = None
                        ) -> tuple[dict[str, Any], Iterator[tuple[int, dict[str, Any]]]]:
    """(header, iterator over (line number, task entry)) of a trace file; a torn last line (no newline
    after it: a write a crash cut short; in a gzip trace, what follows its last sync point) is skipped, and
    its number given to ``on_torn`` (a plain trace's: a gzip one's sync points fall between lines). Any
    other line that is not a task entry is damage and raises: the writer writes nothing else, and a
    second header means two traces joined into one, whose second part the first header (its image root,
    its config) would misdescribe."""
    gz = probe_gzip(path)
    lines = iter_lines(path, on_cut=lambda _: None)
    try:
        _, first = next(lines)
        header = orjson.loads(first)
    except StopIteration:
        raise DataError("empty trace file", path=str(path)) from None
    except orjson.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or "trace" not in header:
        raise ReallodError(f"{path}: not a reallod trace (its first line is no trace header)")

    def entries() -> Iterator[tuple[int, dict[str, Any]]]:
        torn: int | None = None  # a line that did not parse: fine as the last one if cut short
        for lineno, line in lines:
            if torn is not None:
                raise _damaged(path, torn)
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                torn = lineno
                continue
            if not isinstance(obj, dict) or "task_id" not in obj:
                raise _not_an_entry(path, lineno, obj)
            yield lineno, obj
        # written whole: damage, not a torn write (a gzip trace's torn line never reaches here)
        if torn is not None and (gz or _ends_with_newline(path)):
            raise _damaged(path, torn)
        if torn is not None and on_torn is not None:
            on_torn(torn)

    return header, entries()


def _damaged(path: str | os.PathLike, line: int) -> DataError:
    return DataError("invalid JSON in the trace: the file is damaged (not a write cut short by a crash); "
                     "restore it from a copy or rerun the run that wrote it", path=str(path), line=line)


def _not_an_entry(path: str | os.PathLike, line: int, obj: Any) -> DataError:
    if isinstance(obj, dict) and "trace" in obj:
        return DataError("a second trace header: two traces were joined into one file, and each part needs its "
                         "own header (image root, config); give each trace as its run wrote it (`agent "
                         "sft-data` takes several)", path=str(path), line=line)
    what = ("an object without a task_id" if isinstance(obj, dict)
            else f"a JSON {'array' if isinstance(obj, list) else 'value'} ({orjson.dumps(obj).decode()[:40]})")
    return DataError(f"{what}, not a task entry: the trace is damaged or was edited; restore it from a copy or "
                     "rerun the run that wrote it", path=str(path), line=line)


def _ends_with_newline(path: str | os.PathLike) -> bool:
    """Whether a plain trace ends with a newline: a last line ended by one was written whole, so if it
    does not parse it is damage, not a write a crash cut short."""
    with open(path, "rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def find_entry(path: str | os.PathLike, task_id: str) -> dict[str, Any]:
    """The trace entry of one task; the error lists a few ids that do exist."""
    _, entries = read_trace(path)
    seen: list[str] = []
    total = 0
    for entry in entries:
        if entry["task_id"] == task_id:
            return entry
        total += 1
        if len(seen) < 5:
            seen.append(entry["task_id"])
    hint = f"; it has {total} task(s), e.g. {', '.join(seen)}" if seen else "; it holds no tasks"
    raise ReallodError(f"{path}: no task {task_id!r}{hint}")


def _with_error_kind(result: TaskResult) -> TaskResult:
    if result.verdict == "failed" and not result.error_kind:
        result.error_kind = "agent_error"
    return result


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, default=_fallback)


def _fallback(obj: Any) -> Any:
    """PIL images in prompts become their size (the step's ``view`` says which view it was); anything
    else orjson cannot write (a stray object in a decision) is stored as its repr, not lost."""
    if isinstance(obj, Image.Image):
        return {"size": list(obj.size)}
    return repr(obj)
