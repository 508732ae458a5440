"""``reallod data validate``: every problem of a Real-Data file, located as ``FILE:LINE: field``.

Schema checks are :func:`reallod.data.schema.check_record`; this module adds what needs more than
one parsed line: raw-byte problems (invalid UTF-8, a byte-order mark, JSON that only a lenient
parser reads such as ``NaN`` or ``1e400``), file-level problems (empty, not gzip, truncated gzip),
images with more than one record (found once the whole file is read), and, with an image root, the
image checks (missing, undecodable, size differs). An input that cannot be opened, or that is one JSON
document (a COCO json), is refused as every command refuses it.

It streams, holding 16 bytes a record (a hash of its filename and its line, to find an image's
other records) and nothing else that grows with the file. Uncompressed regular files are checked by
worker processes over newline-aligned byte ranges; each worker keeps only its first ``max_errors``
problems (in a temporary file, so an all-bad file does not fill memory) and its share of the
``--fix`` output, and the parent replays both in range order, so problems print in line order (an
image's other records come last) and the fixed file keeps the input's order. ``--fix`` writes valid records in canonical form through an atomic
writer: an interrupted run leaves no partial output, and the workers' folder of parts, named as the
writer's temporary files, is removed by the next write beside it when a killed run left it. Gzip, a
pipe and a device are checked in one process, in order.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from array import array
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from reallod.data.chunks import (
    CHUNKS_PER_WORKER,
    MIN_CHUNK_BYTES,
    RangeLines,
    default_workers,
    map_ranges,
    plan_ranges,
)
from reallod.data.convert_common import EmptyRunError
from reallod.data.images import check_image_root, resolve_image
from reallod.data.io import (
    BOM,
    AtomicWriter,
    check_openable,
    invalid_json_message,
    is_stream,
    iter_lines,
    make_temp_dir,
    not_json_lines,
    probe_gzip,
    raise_with_path,
    refuse_one_document,
    same_file,
    writes_through,
)
from reallod.data.meter import report_read
from reallod.data.records import Record, filename_hash
from reallod.data.schema import PROBLEM_KINDS, Problem, check_record
from reallod.errors import ConfigError, DataError, first_few

FIXABLE = frozenset({"bom"})  # the canonical rewrite removes these by itself
CLAMPABLE = frozenset({"box_outside_image", "negative_box"})  # what --clamp repairs
_UNPARSED = object()


@dataclass(frozen=True, slots=True)
class Issue:
    """A problem located in a file; ``line`` is None for problems of the whole file."""

    path: str
    line: int | None
    kind: str
    field: str
    message: str

    def format(self) -> str:
        """``FILE:LINE: field: message [kind]`` (the field is left out when the whole line is wrong)."""
        where = f"{self.path}:{self.line}: " if self.line is not None else f"{self.path}: "
        if self.field:
            where += f"{self.field}: "
        return f"{where}{self.message} [{self.kind}]"

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "kind": self.kind, "field": self.field,
                "message": self.message}


@dataclass
class ValidationReport:
    """What ``validate`` found in one file; counts are complete even when printing was capped."""

    path: str
    lines: int = 0  # physical lines, blank ones included
    records: int = 0  # non-blank lines checked
    invalid: int = 0  # records with at least one problem
    counts: Counter = field(default_factory=Counter)  # problem kind → number of problems
    shown: int = 0  # issues passed to the caller (at most max_errors, plus file-level ones)
    fix_path: str | None = None
    written: int = 0
    clamped: int = 0

    @property
    def ok(self) -> bool:
        return not self.counts

    @property
    def valid(self) -> int:
        return self.records - self.invalid

    @property
    def dropped(self) -> int:
        return self.records - self.written if self.fix_path else 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path, "ok": self.ok, "lines": self.lines, "records": self.records,
            "valid": self.valid, "invalid": self.invalid, "problems": sum(self.counts.values()),
            "counts": {k: self.counts[k] for k in _kind_order(self.counts)},
        }
        if self.fix_path:
            out["fix"] = {"path": self.fix_path, "written": self.written, "dropped": self.dropped,
                          "clamped": self.clamped, "input_read_to_its_end": not self.counts.get("read_error")}
        return out


def _kind_order(counts: Counter) -> list[str]:
    known = [k for k in PROBLEM_KINDS if counts.get(k)]
    return known + sorted(k for k in counts if k not in PROBLEM_KINDS)


# ------------------------------------------------------------------------------------ per line


def parse_line(line: bytes) -> tuple[Any, list[Problem]]:
    """Parse one raw line: (object, problems of the bytes themselves).

    The object is ``_UNPARSED`` when nothing could be read. JSON that orjson rejects but Python's
    lenient parser reads (``NaN``, ``Infinity``, ``1e400``, lone surrogates) is parsed anyway so the
    report can name the field; when the schema finds nothing else, the line is still reported as
    not strict JSON, because every other reader (orjson, the training code) would fail on it.
    """
    problems: list[Problem] = []
    if line.startswith(BOM):
        problems.append(Problem("bom", "", "line starts with a UTF-8 byte-order mark (--fix removes it)"))
        line = line[len(BOM):]
    try:
        return orjson.loads(line), problems
    except orjson.JSONDecodeError as e:
        strict_error = e
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as u:
        bad = line[u.start:u.start + 1].hex()
        problems.append(Problem("bad_utf8", "", f"invalid UTF-8 (byte 0x{bad} at offset {u.start} of the line)"))
        return _UNPARSED, problems
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        problems.append(Problem("bad_json", "", invalid_json_message(strict_error, text)))
        return _UNPARSED, problems
    problems.append(Problem("bad_json", "", f"not strict JSON at column {strict_error.pos + 1} ({strict_error.msg}): "
                                            "NaN, Infinity, an out-of-range number or a lone surrogate, "
                                            "which only lenient parsers read"))
    return obj, problems


def check_image(obj: Any, root: str, decode: bool = False) -> list[Problem]:
    """Image problems of one record: only the header is read (PIL opens lazily), or with ``decode`` the
    whole image, as training loads it (a truncated file has a whole header)."""
    if not isinstance(obj, dict):
        return []
    filename = obj.get("filename")
    if not isinstance(filename, str) or not filename.strip() or "\0" in filename:
        return []  # the schema check reports it
    path = resolve_image(root, filename)
    if path is None:
        return [Problem("image_outside_root", "filename",
                        f"{filename!r} is absolute or leads out of the image root; refusing to open it")]
    from reallod.data.images import DEFAULT_MAX_PIXELS, ROTATING_ORIENTATIONS, header_orientation, open_header

    try:
        with open_header(path) as im:  # no size limit: nothing is decoded (unless asked to: by its size)
            stored, orientation = im.size, header_orientation(im)
            if decode and stored[0] * stored[1] > DEFAULT_MAX_PIXELS:
                return [Problem("unreadable_image", "filename", f"{path}: {stored[0]}x{stored[1]} pixels, above "
                                f"the {DEFAULT_MAX_PIXELS:,} that training and detection decode unless given "
                                "--max-pixels; not decoded")]
            if decode:
                im.load()
    except (FileNotFoundError, NotADirectoryError):
        return [Problem("missing_image", "filename", f"{path} not found")]
    except IsADirectoryError:
        return [Problem("missing_image", "filename", f"{path} is a directory")]
    except Exception as e:  # any decoder error means the same thing to the user
        return [Problem("unreadable_image", "filename", f"{path}: cannot decode ({type(e).__name__}: {e})")]
    rotated = orientation in ROTATING_ORIENTATIONS
    width, height = (stored[1], stored[0]) if rotated else stored  # as the image loads: upright
    want_h, want_w = obj.get("height"), obj.get("width")
    if not (_is_size(want_h) and _is_size(want_w)) or (width, height) == (want_w, want_h):
        return []
    fields = ",".join(k for k, a, b in (("height", height, want_h), ("width", width, want_w)) if a != b)
    note = ""
    if rotated:
        note = (f" (the file stores it {stored[0]}x{stored[1]} and its EXIF orientation {orientation} turns it "
                f"upright, as it loads for detection and training: sizes and boxes are the upright image's)")
    return [Problem("image_size_mismatch", fields,
                    f"image is {width}x{height} (width x height), record says {want_w}x{want_h}{note}")]


def _is_size(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def clamp_record(obj: dict[str, Any]) -> dict[str, Any]:
    """Canonical copy of a record with every box clamped to ``[0, width] x [0, height]``."""
    rec = Record.from_dict(obj)
    w, h = float(rec.width), float(rec.height)
    for _source, _i, pair in rec.iter_pairs():
        pair.bboxes = [[min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h)]
                       for x1, y1, x2, y2 in pair.bboxes]
    return rec.to_dict()


class LineChecker:
    """Checks lines one at a time; counts problems and, with ``fix_out``, writes the records to keep.
    Keeps each valid record's :func:`filename_hash` and line (16 bytes) for :func:`repeated_images`."""

    def __init__(self, *, image_root: str | None = None, clamp: bool = False,
                 fix_out: IO[bytes] | None = None, decode: bool = False) -> None:
        self.image_root, self.clamp, self.fix_out, self.decode = image_root, clamp, fix_out, decode
        self.records = self.invalid = self.written = self.clamped = 0
        self.counts: Counter = Counter()
        self.names, self.name_lines = array("Q"), array("Q")

    def check(self, line: bytes, lineno: int) -> list[Problem]:
        self.records += 1
        obj, problems = parse_line(line)
        if obj is not _UNPARSED:
            schema = check_record(obj, line)
            if schema and problems and problems[-1].kind == "bad_json" and problems[-1].field == "":
                problems.pop()  # lenient JSON: the schema problems say what is wrong more precisely
            problems.extend(schema)
            if self.image_root is not None:
                problems.extend(check_image(obj, self.image_root, self.decode))
        if problems:
            self.invalid += 1
            self.counts.update(p.kind for p in problems)
        else:  # a bad record is reported for what it is, not also as another record of its image
            self.names.append(filename_hash(obj["filename"]))
            self.name_lines.append(lineno)
        if self.fix_out is not None and obj is not _UNPARSED:
            self._fix(obj, problems)
        return problems

    def _fix(self, obj: Any, problems: list[Problem]) -> None:
        kinds = {p.kind for p in problems}
        if kinds <= FIXABLE:
            out = Record.from_dict(obj).to_dict()
        elif self.clamp and kinds <= FIXABLE | CLAMPABLE:
            out = clamp_record(obj)
            if check_record(out):  # e.g. a box wholly outside the image is degenerate once clamped
                return
            self.clamped += 1
        else:
            return
        self.fix_out.write(orjson.dumps(out) + b"\n")
        self.written += 1


# ----------------------------------------------------------------------------------- per range


@dataclass
class _RangeResult:
    lines: int
    records: int
    invalid: int
    counts: Counter
    spilled: int
    written: int
    clamped: int
    names: array
    name_lines: array


def _validate_range(job: tuple[str, int, int, dict[str, Any]]) -> _RangeResult:
    """Worker: check one byte range; problems go to ``spill`` (at most ``cap``), kept records to ``part``."""
    path, start, end, cfg = job
    spilled = 0
    spill = part = None
    try:
        part = open(cfg["part"], "wb") if cfg["part"] else None  # noqa: SIM115 - closed in finally
        checker = LineChecker(image_root=cfg["image_root"], clamp=cfg["clamp"], fix_out=part, decode=cfg["decode"])
        cap = cfg["cap"]
        lines = RangeLines(path, start, end, keep_bom=True)  # reported: other JSON readers refuse it
        for lineno, line in lines:
            try:  # check() reads nothing: an OSError is its write of the part beside OUT (a full disk)
                problems = checker.check(line, lineno)
            except OSError as e:
                raise_with_path(e, cfg["out"])
            for p in problems:
                if cap is not None and spilled >= cap:
                    break
                try:
                    if spill is None:
                        spill = open(cfg["spill"], "wb")  # noqa: SIM115 - closed in finally
                    spill.write(orjson.dumps((lineno, p.kind, p.field, p.message)) + b"\n")
                except OSError as e:
                    raise_with_path(e, cfg["spill"])
                spilled += 1
    finally:
        for f, name in ((spill, cfg["spill"]), (part, cfg["out"])):
            if f is not None:
                try:  # flushes the last writes
                    f.close()
                except OSError as e:
                    raise_with_path(e, name)
    return _RangeResult(lines.lines, checker.records, checker.invalid, checker.counts, spilled,
                        checker.written, checker.clamped, checker.names, checker.name_lines)


# ------------------------------------------------------------------------------------ per file


def validate_file(path: str | os.PathLike, *, images: str | os.PathLike | None = None,
                  max_errors: int | None = None, fix: str | os.PathLike | None = None,
                  clamp: bool = False, workers: int | None = None,
                  on_issue: Callable[[Issue], None] | None = None,
                  chunk_bytes: int = MIN_CHUNK_BYTES, decode: bool = False) -> ValidationReport:
    """Check every line of ``path``; ``on_issue`` receives the first ``max_errors`` problems in line order.

    File-level problems (not gzip, truncated gzip, empty file) are always passed on. With ``fix`` the
    records without problems (and, with ``clamp``, those whose only problems are boxes outside the
    image, once clamped) are written canonically to ``fix``; when none would be, :class:`EmptyRunError`
    is raised and ``fix`` keeps what it held. Unusable arguments raise :class:`ConfigError`; an input
    that cannot be opened (missing, a folder, no permission) or that is one JSON document, not JSON
    Lines (a COCO json, named on its first line), raises :class:`DataError`, as in every other
    command; nothing else about the data raises.
    """
    path = os.fspath(path)
    if max_errors is not None and max_errors < 0:
        raise ConfigError(f"--max-errors must be >= 0, got {max_errors}")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if clamp and fix is None:
        raise ConfigError("--clamp changes what --fix writes: give --fix OUT as well")
    if decode and images is None:
        raise ConfigError("--decode decodes the images: give --images ROOT as well")
    image_root = None
    if images is not None:
        image_root = os.fspath(images)
        check_image_root(image_root)
    check_openable(path)
    refuse_one_document(path)  # a pipe is checked on its first line as it is read
    report = ValidationReport(path=path)
    emit = on_issue or (lambda issue: None)

    def file_issue(kind: str, message: str) -> None:
        report.counts[kind] += 1
        report.shown += 1
        emit(Issue(path, None, kind, "", message))

    stream = is_stream(path)  # a pipe is read once: never probed apart from its reading
    try:
        gz = not stream and probe_gzip(path)
    except DataError as e:
        file_issue("read_error", e.message)
        return report
    writer = AtomicWriter(fix) if fix is not None else None
    try:
        if gz or stream:
            names, lines = _validate_sequential(path, report, image_root, clamp, writer, max_errors, emit,
                                                file_issue, decode)
        else:
            names, lines = _validate_ranges(path, report, image_root, clamp, writer, max_errors, emit, workers,
                                            chunk_bytes, decode)
        _report_repeated_images(path, report, repeated_images(names, lines), max_errors, emit)
        if report.records == 0 and not report.counts.get("read_error"):
            file_issue("empty_file", "no records (the file is empty or holds only blank lines)")
        if writer is not None:
            if report.counts.get("read_error") and same_file(fix, path):  # what follows the damage is lost
                raise EmptyRunError("--fix: the input could not be read to its end: fixed in place, what "
                                    "follows the damage would be lost (a recovery tool may still read it); "
                                    "nothing written: give --fix another file to keep the records read "
                                    "before it", path=path)
            if not report.written:  # an empty --fix would replace an earlier output, even the input itself
                raise EmptyRunError(f"--fix: no record to write ({report.records:,} read, all dropped); nothing "
                                    f"written, {os.fspath(fix)} left as it was", path=path)
            writer.close()
            report.fix_path = os.fspath(fix)
    finally:
        if writer is not None:
            writer.abort()  # no-op once closed
    return report


def _validate_sequential(path: str, report: ValidationReport, image_root: str | None, clamp: bool,
                         writer: AtomicWriter | None, max_errors: int | None,
                         emit: Callable[[Issue], None], file_issue: Callable[[str, str], None],
                         decode: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Gzip, a pipe, a device: one pass in this process, problems passed on as they are found. Returns
    each record's filename hash and line."""
    checker = LineChecker(image_root=image_root, clamp=clamp, fix_out=writer, decode=decode)
    last, whole = 0, None
    try:
        for lineno, line in iter_lines(path, keep_bom=True):  # reallod reads a BOM, other JSON readers do not
            if not last and (whole := not_json_lines(path, lineno, line)):
                break  # raised below: this reports a file's read errors as problems, not this one
            last = lineno
            for p in checker.check(line, lineno):
                if max_errors is None or report.shown < max_errors:
                    report.shown += 1
                    emit(Issue(path, lineno, p.kind, p.field, p.message))
    except DataError as e:  # corrupt or truncated stream: what was read so far stays checked
        file_issue("read_error", e.message)
    if whole is not None:
        raise whole
    report.lines = last
    report.records, report.invalid = checker.records, checker.invalid
    report.written, report.clamped = checker.written, checker.clamped
    report.counts.update(checker.counts)
    return np.frombuffer(checker.names, dtype=np.uint64), np.frombuffer(checker.name_lines, dtype=np.uint64)


def _validate_ranges(path: str, report: ValidationReport, image_root: str | None, clamp: bool,
                     writer: AtomicWriter | None, max_errors: int | None,
                     emit: Callable[[Issue], None], workers: int, chunk_bytes: int,
                     decode: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Uncompressed: byte ranges in worker processes, replayed here in range order. Returns each record's
    filename hash and line, as :func:`_validate_sequential`.

    The workers' parts go to a folder beside ``--fix`` OUT (or in the temporary folder), named as
    OUT's temporary file is: a killed run's folder is removed by the next write there."""
    ranges = plan_ranges(path, workers * CHUNKS_PER_WORKER, min_bytes=chunk_bytes)
    beside = writer is not None and not writes_through(writer.path)  # never a folder in /dev for /dev/stdout
    tmp = make_temp_dir(writer.path if beside else Path(tempfile.gettempdir()) / "reallod-validate")
    try:
        jobs = [(path, s, e, {"image_root": image_root, "clamp": clamp, "cap": max_errors, "decode": decode,
                              "spill": os.path.join(tmp, f"{i}.issues"),
                              "part": os.path.join(tmp, f"{i}.part") if writer is not None else None,
                              "out": os.fspath(writer.path) if writer is not None else None})
                for i, (s, e) in enumerate(ranges)]
        offset = 0
        names: list[np.ndarray] = []
        lines: list[np.ndarray] = []
        for job, res in zip(jobs, map_ranges(_validate_range, jobs, workers), strict=True):
            cfg = job[3]
            if res.spilled:
                with open(cfg["spill"], "rb") as f:
                    for raw in f:
                        if max_errors is not None and report.shown >= max_errors:
                            break
                        lineno, kind, fld, message = orjson.loads(raw)
                        report.shown += 1
                        emit(Issue(path, offset + lineno, kind, fld, message))
                os.unlink(cfg["spill"])
            if writer is not None:
                with open(cfg["part"], "rb") as f:
                    shutil.copyfileobj(f, writer, 1 << 20)
                os.unlink(cfg["part"])
            names.append(np.frombuffer(res.names, dtype=np.uint64))
            lines.append(np.frombuffer(res.name_lines, dtype=np.uint64) + np.uint64(offset))
            offset += res.lines
            report_read(job[2] - job[1])
            report.records += res.records
            report.invalid += res.invalid
            report.written += res.written
            report.clamped += res.clamped
            report.counts.update(res.counts)
        report.lines = offset
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return np.concatenate(names), np.concatenate(lines)


def repeated_images(names: np.ndarray, lines: np.ndarray) -> list[list[int]]:
    """The lines of the records of each image that has more than one, in line order, ordered by each
    image's second record (where it is reported). ``names``: :func:`filename_hash` of each record."""
    if len(names) < 2:
        return []
    order = np.argsort(names, kind="stable")  # stable: an image's lines stay in file order
    ordered = names[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    sizes = np.diff(np.r_[starts, len(ordered)])
    groups = [lines[order[s:s + n]].tolist() for s, n in zip(starts[sizes > 1], sizes[sizes > 1], strict=True)]
    return sorted(groups, key=lambda g: g[1])


def _report_repeated_images(path: str, report: ValidationReport, groups: list[list[int]], max_errors: int | None,
                            emit: Callable[[Issue], None]) -> None:
    """One problem per image with more than one record, at its second record's line (after the problems
    found line by line: finding them takes the whole file)."""
    if groups:
        report.counts["duplicate_image"] = len(groups)
    for group in groups:
        if max_errors is not None and report.shown >= max_errors:
            break
        report.shown += 1
        others = f" ({len(group)} records of it: lines {first_few([str(n) for n in group], 5)})" if len(group) > 2 else ""
        emit(Issue(path, group[1], "duplicate_image", "filename",
                   f"the image of line {group[0]} again{others}: training and stats count each record as an image "
                   f"of its own; `reallod data merge {path} -o OUT` combines them into one"))


def summary_rows(report: ValidationReport) -> Iterable[tuple[str, int, str]]:
    """(kind, count, description) in the fixed order of :data:`PROBLEM_KINDS`."""
    for kind in _kind_order(report.counts):
        yield kind, report.counts[kind], PROBLEM_KINDS.get(kind, "")


def render_summary(report: ValidationReport, *, max_errors: int | None = None) -> list[Any]:
    """Rich renderables: the per-kind table and one line on records (and on ``--fix``)."""
    from rich.table import Table
    from rich.text import Text

    out: list[Any] = []
    total = sum(report.counts.values())
    if total and max_errors is not None and report.shown < total:
        out.append(Text(f"... {total - report.shown:,} more problems not shown (--max-errors {max_errors})"))
    if report.counts:
        table = Table(title=f"Problems in {report.path}", title_justify="left")
        table.add_column("kind")
        table.add_column("count", justify="right")
        table.add_column("meaning")
        for kind, n, meaning in summary_rows(report):
            table.add_row(kind, f"{n:,}", meaning)
        out.append(table)
    verdict = "OK" if report.ok else "INVALID"
    repeated = report.counts.get("duplicate_image", 0)
    out.append(Text(f"{verdict}: {report.records:,} records checked, {report.valid:,} valid, "
                    f"{report.invalid:,} with problems"
                    + (f", {repeated:,} images with more than one record" if repeated else "")
                    + f" ({total:,} problems)"))
    if report.fix_path:
        out.append(Text(f"--fix: wrote {report.written:,} records to {report.fix_path}, dropped "
                        f"{report.dropped:,}" + (f", clamped boxes in {report.clamped:,}" if report.clamped else "")
                        + ("; the input could not be read to its end (read_error): the records after the damage "
                           "are not in it" if report.counts.get("read_error") else "")
                        + ("; an image's records are each kept (data merge combines them)" if repeated else "")))
    return out
