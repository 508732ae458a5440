"""Streaming, constant-memory reading and atomic writing of ``.jsonl`` / ``.jsonl.gz``.

Gzip is recognised by its magic bytes, not the file name, so a mislabelled file still reads and a
``.gz`` that is not gzip gets a clear error. Writers go to a temporary file beside the target and
are renamed into place only when complete: a crash never leaves a half-written output.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gzip
import hashlib
import io
import json
import os
import secrets
import shutil
import socket
import stat
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Literal, NoReturn, Self

import orjson

from reallod.data.meter import current_meter
from reallod.data.records import Record
from reallod.data.schema import check_record
from reallod.errors import ConfigError, DataError, ReallodError

GZIP_MAGIC = b"\x1f\x8b"
BOM = b"\xef\xbb\xbf"  # the UTF-8 byte-order mark Windows editors put first; JSON readers (orjson) refuse it
_BUFFER = 1 << 20


def _temp_name(path: Path) -> Path:
    """A hidden name beside ``path`` holding this host and process (see :func:`_remove_orphans`):
    ``.NAME.HOST.PID.HEX.tmp``. Where that would be longer than a file name may be in the folder, NAME
    is cut to a prefix followed by ``~`` and a hash of the whole name (``.PREFIX~HASH.HOST.PID.HEX.tmp``):
    an output whose own name is allowed, but only just, is never refused for its temporary name."""
    tail = f".{_HOST}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    name = path.name
    room = file_name_max(path.parent) - 1 - len(os.fsencode(tail))
    if len(os.fsencode(name)) > room:
        digest = "~" + hashlib.sha1(os.fsencode(name)).hexdigest()[:12]
        name = _prefix(name, room - len(digest)) + digest
    return path.parent / f".{name}{tail}"


def _prefix(name: str, limit: int) -> str:
    """The longest start of ``name`` that is at most ``limit`` bytes, not cut inside a character."""
    out, used = [], 0
    for ch in name:
        used += len(os.fsencode(ch))
        if used > limit:
            break
        out.append(ch)
    return "".join(out)


NAME_MAX = 255  # bytes of one file name on Linux's usual file systems, where the folder cannot say


@functools.lru_cache(maxsize=1024)
def _name_max(folder: str) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):  # no such folder (yet), or no limit to read
        return NAME_MAX


def file_name_max(folder: str | os.PathLike) -> int:
    """How many bytes one file name may have in ``folder`` (its file system says; 255 where it cannot)."""
    return min(_name_max(os.path.abspath(folder)), NAME_MAX)


def _create_beside(path: Path) -> tuple[int, Path]:
    """A new, empty temporary file next to ``path``, made with the permissions the umask gives any new
    file. (``mkstemp`` makes it 0600, and reading the umask to widen that means setting it for a moment:
    a file another thread created then would be world-writable.) Its name holds this host and process,
    so a later writer in that folder can remove what a killed one left (:func:`_remove_orphans`)."""
    _remove_orphans(path.parent)
    for _ in range(100):
        tmp = _temp_name(path)
        try:  # O_EXCL: never an existing file, nor a link planted at that name
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temporary name for {path.name}")


def _replaced_mode(path: Path) -> int | None:
    """The permissions of the file ``path`` replaces, for the new one to keep (a private file must not
    become readable by all, as ``sed -i`` keeps them too); None where nothing is there. A file this
    process may not write is refused: renaming over it would replace another user's read-only file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    if not os.access(path, os.W_OK):
        raise PermissionError(errno.EACCES, "a read-only file: not replaced (make it writable, or write "
                              "another file)", os.fspath(path))
    return stat.S_IMODE(st.st_mode)


def make_temp_dir(path: str | os.PathLike) -> Path:
    """A new hidden folder beside ``path`` for a run's working files (``data validate``'s per-worker
    parts), named as the writers' temporary files are, so that when a killed run leaves it the next
    write in that folder removes it (:func:`_remove_orphans`) instead of it staying there forever."""
    path = Path(path)
    _remove_orphans(path.parent)
    for _ in range(100):
        tmp = _temp_name(path)
        try:
            tmp.mkdir(mode=0o700)
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temporary name for {path.name}")


_HOST = socket.gethostname().replace("/", "_")


_SWEPT: set[str] = set()  # folders this process has removed orphans from
_SWEPT_LOCK = threading.Lock()


def _remove_orphans(folder: Path) -> None:
    """Delete the temporary files and folders in ``folder`` that processes of this host left when they
    were killed (``kill -9``, out of memory): a rerun over a large input would otherwise leave one more
    each time. A file is an orphan only when its process is gone; those of other hosts are left alone.
    Once per folder and process: listing the folder for every file written made writing N files into
    one folder (detect's ``OUT/preds`` of a million images) quadratic."""
    key = os.path.abspath(folder)
    with _SWEPT_LOCK:
        if key in _SWEPT:
            return
        _SWEPT.add(key)
    try:
        names = [n for n in os.listdir(folder) if n.startswith(".") and n.endswith(".tmp")]
    except OSError:
        return
    for name in names:
        parts = name.rsplit(".", 3)  # ".NAME.HOST", pid, random hex, "tmp"
        if len(parts) == 4 and parts[0].endswith(f".{_HOST}") and parts[1].isdigit() and not _alive(int(parts[1])):
            _remove(os.path.join(folder, name))


def _remove(path: str) -> None:
    """A file, or a folder with what it holds; a link is removed, never followed."""
    with contextlib.suppress(OSError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def dumps(obj: Any) -> bytes:
    """One JSON line (no newline). Non-ASCII is kept as UTF-8."""
    return orjson.dumps(obj)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def is_stream(path: str | os.PathLike) -> bool:
    """True for a pipe, a FIFO or a device (``/dev/stdin``, bash's ``<(zcat ...)``): what can be read
    once only, in order, so it is neither probed apart from its reading nor cut into byte ranges.
    False for a regular file, a folder and a path that cannot be looked at (the reader says why)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def writes_through(path: str | os.PathLike) -> bool:
    """Whether an output at ``path`` is written through as it is, not made aside and renamed into place:
    a pipe, a FIFO or a device, and a process's file descriptor (``/dev/stdout`` is a link to
    ``/proc/self/fd/1`` whatever stdout is, a file included: a file put in place of the link would break
    it for the machine). A regular file under ``/dev/shm`` is a file like any other."""
    if is_stream(path):
        return True
    full = os.path.abspath(path)
    if full.startswith(("/proc/", "/dev/fd/")):
        return True
    try:
        return os.path.islink(full) and os.readlink(full).startswith("/proc/")
    except OSError:
        return False


def is_gzip_file(path: str | os.PathLike) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def wants_gzip(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(".gz")


def probe_gzip(path: str | os.PathLike) -> bool:
    """True for gzip content; :class:`DataError` when the file cannot be opened or a ``.gz`` is not gzip.

    For a regular file: what it reads of a pipe (:func:`is_stream`) is lost to the next reader, which
    is why :func:`iter_lines` and :func:`read_whole` look at the magic bytes of the one file they open."""
    stream, gz = open_input(path)
    stream.close()
    return gz


def open_input(path: str | os.PathLike, *, counted: bool = False) -> tuple[IO[bytes], bool]:
    """``path`` opened once for buffered reading, and whether its content is gzip; errors name the file.

    The magic bytes are read off this one open file and put back: a pipe (``/dev/stdin``,
    ``<(zcat ...)``) can be read only once, so a probe that opened it apart took its first lines.
    ``counted``: the bytes read (of the file: gzip's compressed ones) go to the current
    :class:`~reallod.data.meter.Meter`; a probe of a file's head is not counted, its reading is."""
    path = str(path)
    raw = _open_raw(path)
    meter = current_meter()
    try:
        head = _read_head(raw, len(GZIP_MAGIC))
        if raw.seekable():
            raw.seek(0)
            source: IO[bytes] = raw
        else:
            source = _Prefixed(head, raw)
        if counted and meter.active:
            source = _Counted(source, meter.advance)
        stream = io.BufferedReader(source, buffer_size=_BUFFER)
    except OSError as e:
        raw.close()
        raise DataError(f"cannot read: {e.strerror}", path=path) from None
    gz = head == GZIP_MAGIC
    if wants_gzip(path) and not gz:
        stream.close()
        raise DataError("not a gzip file (the name ends in .gz but the content is not gzip)", path=path)
    return stream, gz


def _open_raw(path: str) -> IO[bytes]:
    """``path`` opened unbuffered for reading; :class:`DataError` says why it cannot be (missing, a folder,
    no permission)."""
    try:
        return open(path, "rb", buffering=0)
    except FileNotFoundError:
        raise DataError("no such file", path=path) from None
    except IsADirectoryError:
        raise DataError("is a directory, expected a file", path=path) from None
    except OSError as e:
        raise DataError(f"cannot open: {e.strerror}", path=path) from None


def check_openable(path: str | os.PathLike) -> None:
    """Raise :class:`DataError`, as every reader does, for an input that cannot be opened (missing, a
    folder, no permission): ``data validate`` reports what a file holds as problems, but a path it cannot
    open is an unusable argument. A pipe is not opened: what this took of it the reading would lose."""
    if not is_stream(path):
        _open_raw(os.fspath(path)).close()


def _read_head(raw: IO[bytes], n: int) -> bytes:
    """The first ``n`` bytes (fewer at the end of the file): a pipe may hand them over in pieces."""
    head = b""
    while len(head) < n:
        chunk = raw.read(n - len(head))
        if not chunk:
            break
        head += chunk
    return head


class _Prefixed(io.RawIOBase):
    """``head`` (the bytes already read off ``raw`` to sniff its format), then the rest of ``raw``."""

    def __init__(self, head: bytes, raw: IO[bytes]) -> None:
        self._head, self._raw = head, raw

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        if self._head:
            n = min(len(buf), len(self._head))
            buf[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._raw.readinto(buf)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _Counted(io.RawIOBase):
    """``raw``, each read's length told to ``on_read`` (a meter: once a buffer, 1 MiB, not once a line)."""

    def __init__(self, raw: IO[bytes], on_read: Callable[[int], None]) -> None:
        self._raw, self._on_read = raw, on_read

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = self._raw.readinto(buf)
        if n:
            self._on_read(n)
        return n

    def readall(self) -> bytes:  # the base class's reads 8 KiB at a time
        data = self._raw.read()
        self._on_read(len(data))
        return data

    def close(self) -> None:
        self._raw.close()
        super().close()


def read_whole(path: str | os.PathLike) -> bytes:
    """A whole (small) file's content, gunzipped when it is gzip, without a leading byte-order mark;
    errors name the file."""
    path = str(path)
    stream, gz = open_input(path, counted=True)
    with stream:
        data = stream.read()
    if gz:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"gzip stream is corrupt or truncated ({e})", path=path) from None
    return data.removeprefix(BOM)


class _Gunzip(io.RawIOBase):
    """The gunzipped content of ``raw`` (every member, zero padding between them skipped, as gzip does).

    A truncated or corrupt stream ends it like an end of file, the reason kept in :attr:`error`: an
    exception would make the :class:`io.BufferedReader` above it drop the complete lines it holds.
    """

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._member: Any = None  # the member's decompressor; None between members
        self._input = b""
        self.error: str | None = None
        self.cut = False  # the error is only that the file ends inside a member (its writer still open)

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        while self.error is None:
            if not self._input:
                self._input = self._raw.read(1 << 16)
                if not self._input:
                    if self._member is not None:
                        self.error, self.cut = "the file ends inside a gzip member", True
                    return 0
            if self._member is None:
                self._input = self._input.lstrip(b"\0")
                if not self._input:
                    continue
                self._member = zlib.decompressobj(wbits=31)
            out = self._decompress(len(buf))
            if self._member.eof:
                self._input, self._member = self._member.unused_data, None
            if out:
                buf[: len(out)] = out
                return len(out)
        return 0

    def _decompress(self, size: int) -> bytes:
        """Up to ``size`` bytes of output. A failing call keeps none of what it decoded, the lines
        before the bad byte included: those are decoded again from a copy of the state before it."""
        before = self._member.copy()  # microseconds a call, which yields up to a buffer of output
        try:
            out = self._member.decompress(self._input, size)
        except zlib.error as e:
            self.error = str(e)
            return _replay(before, self._input, size)
        self._input = self._member.unconsumed_tail
        return out


def _replay(member: Any, data: bytes, size: int) -> bytes:
    """What ``member`` decodes of ``data`` before its first bad byte (at most ``size`` bytes), fed one
    byte at a time so that the error drops only that byte's output."""
    out = bytearray()
    with contextlib.suppress(zlib.error):
        for i in range(len(data)):
            if len(out) >= size:  # a max_length of 0 would mean no limit
                break
            out += member.decompress(data[i:i + 1], size - len(out))
    return bytes(out)


def iter_lines(path: str | os.PathLike, *, keep_bom: bool = False, on_cut: Callable[[int], None] | None = None,
               counted: bool = True) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, raw line without the newline), skipping blank lines.

    A byte-order mark that starts the (gunzipped) content is dropped, unless ``keep_bom`` (for
    ``data validate``, which reports it: other JSON readers refuse it).

    Read failures (missing file, a ``.gz`` that is not gzip, a truncated stream) raise
    :class:`DataError` naming the file and the last line read; every complete line before a
    truncated or corrupt gzip stream breaks off is yielded first. With ``on_cut``, a gzip stream that
    only ends inside a member (a file its writer has not closed: a trace of a run that goes on or was
    killed) ends the lines instead, ``on_cut`` called with the last line's number; the line the cut
    broke off is not yielded. ``counted``: the bytes read go to the current meter (not for a look at
    the first line).
    """
    path = str(path)
    raw, gz = open_input(path, counted=counted)
    with raw:
        gunzip = _Gunzip(raw) if gz else None
        stream: IO[bytes] = io.BufferedReader(gunzip, buffer_size=_BUFFER) if gunzip is not None else raw
        lineno = 0
        for lineno, line in enumerate(stream, 1):
            if gunzip is not None and gunzip.error and not line.endswith(b"\n"):
                lineno -= 1  # the line the break cut short
                break
            if lineno == 1 and not keep_bom:
                line = line.removeprefix(BOM)
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield lineno, line
        if gunzip is not None and gunzip.error:
            if gunzip.cut and on_cut is not None:
                on_cut(lineno)
                return
            raise DataError(f"gzip stream is corrupt or truncated after line {lineno} ({gunzip.error})", path=path)


def check_gzip_whole(path: str | os.PathLike) -> None:
    """Decompress a gzip file to its end, before any work on it: a stream that is cut or corrupt near its
    end is otherwise found by the reading once everything before it has been done (and paid for, in a run
    of model calls). A file that is not gzip, and a pipe (read once), pass unread."""
    path = str(path)
    if is_stream(path):
        return
    raw, gz = open_input(path)
    with raw:
        if not gz:
            return
        gunzip, buf = _Gunzip(raw), bytearray(1 << 20)
        while gunzip.readinto(buf):
            pass
    if gunzip.error:
        raise DataError(f"gzip stream is corrupt or truncated ({gunzip.error}): nothing was run on it; repair or "
                        "replace the file", path=path)


FROM_COCO = "to Real-Data records with `reallod data convert from-coco`"


def one_document(line: bytes) -> str | None:
    """Why a file whose first line is ``line`` is one JSON document rather than JSON Lines: the line opens
    a value it does not close and breaks where pretty-printers do (after ``{``, ``[``, ``,`` or ``:``; a
    JSON Lines line cut short rarely ends just there), or it is a COCO json on one line; None when it may
    be JSON Lines. Read line by line, such a file failed on its first line with "invalid JSON: unexpected
    end of data", or on whichever line parsed alone."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        end = line.rstrip()
        if e.pos < len(end) or not end.endswith((b"{", b"[", b",", b":")):
            return None
        return ("not JSON Lines: its first line opens a JSON value it does not close, so the file is one JSON "
                "document over many lines (a COCO json?), where one JSON object a line is read; a COCO json "
                f"converts {FROM_COCO}")
    if isinstance(obj, dict) and {"images", "annotations"} <= obj.keys():
        return f"a COCO json (it has images and annotations), not JSON Lines of Real-Data records; convert it {FROM_COCO}"
    return None


def not_json_lines(path: str | os.PathLike, lineno: int, line: bytes) -> DataError | None:
    """The error every strict reader gives a file whose first non-blank line, ``line``, shows it is one JSON
    document (:func:`one_document`: a COCO json) rather than JSON Lines; None for any other line, a valid
    record included. For the readers that go on past a bad line (``data validate``, ``data stats``), which
    else gave a problem for each line of the document. UTF-16 text (what Windows PowerShell's ``>``
    writes) is refused the same way: every line of it would be a problem of its own."""
    if utf16 := _utf16(line):
        return DataError(f"UTF-16 text ({utf16}), where UTF-8 JSON Lines are read: save the file as UTF-8 "
                         "(iconv -f UTF-16 -t UTF-8)", path=os.fspath(path), line=lineno)
    line = line.removeprefix(BOM)
    whole = one_document(line)
    if whole is None or _is_record(line):
        return None
    return DataError(whole, path=os.fspath(path), line=lineno)


def _utf16(line: bytes) -> str | None:
    """How ``line`` shows it is UTF-16: its byte-order mark, or (without one) a NUL in every other byte
    of mostly ASCII text; None for anything else."""
    if line[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "by its byte-order mark"
    body = line.rstrip(b"\r\n\x00")
    if len(body) >= 8 and (body[0::2].count(0) > 0.9 * len(body[0::2]) or body[1::2].count(0) > 0.9 * len(body[1::2])):
        return "a NUL byte in every other place, with no byte-order mark"
    return None


def _is_record(line: bytes) -> bool:
    try:
        return not check_record(orjson.loads(line), line)
    except orjson.JSONDecodeError:
        return False


def refuse_one_document(path: str | os.PathLike) -> None:
    """Raise :func:`not_json_lines`'s error for a regular file, from its first line, before any work is
    done on it. A file that cannot be read passes (its reading says why), and so does a pipe, which is
    read once: its reader checks the first line as it comes."""
    if is_stream(path):
        return
    lines = iter_lines(path, counted=False)
    try:
        first = next(lines, None)
    except DataError:
        return
    finally:
        lines.close()
    error = not_json_lines(path, *first) if first is not None else None
    if error is not None:
        raise error


def _line_error(path: str | os.PathLike, lineno: int, line: bytes, first: bool, message: str,
                field: str | None = None) -> DataError:
    """A bad line's error, or for the first line of a file that is one JSON document, that."""
    whole = one_document(line) if first else None
    return DataError(whole or message, path=str(path), line=lineno, field=None if whole else field)


def json_problem(line: bytes, error: orjson.JSONDecodeError) -> str:
    """Why a line does not parse, in ``data validate``'s words: its first byte that is not UTF-8 (orjson
    says only "str is not valid UTF-8: surrogates not allowed"), a byte-order mark inside the file, JSON
    only a lenient parser reads (orjson's "unexpected character" for NaN), else the parser's message
    at the column (orjson's own text says "line 1" of every line)."""
    if utf16 := _utf16(line):
        return f"not UTF-8 text (UTF-16, {utf16}); save the file as UTF-8"
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return (f"not UTF-8 text: byte 0x{line[e.start]:02x} at column {e.start + 1}; save the file as "
                "UTF-8")
    if text.startswith("\ufeff"):
        return ("the line starts with a UTF-8 byte-order mark (files joined with cat?); `reallod data validate "
                "FILE --fix OUT` removes it")
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return invalid_json_message(error, text)
    return (f"not strict JSON at column {error.pos + 1} ({error.msg}): NaN, Infinity, an out-of-range number "
            "or a lone surrogate, which only lenient parsers read")


def invalid_json_message(error: json.JSONDecodeError, text: str) -> str:
    """The parser's message at its column, with a hint when the line ends inside a value."""
    if error.pos >= len(text.rstrip()) and "recursion" not in error.msg:
        return f"invalid JSON: the line ends inside a JSON value ({error.msg}); truncated?"
    return f"invalid JSON at column {error.pos + 1}: {error.msg}"


def iter_json(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed JSON); a line that does not parse raises :class:`DataError`."""
    for n, (lineno, line) in enumerate(iter_lines(path)):
        try:
            yield lineno, orjson.loads(line)
        except orjson.JSONDecodeError as e:
            raise _line_error(path, lineno, line, n == 0, json_problem(line, e)) from None


def read_numbered_records(path: str | os.PathLike, *, on_error: Literal["raise", "skip"] = "raise",
                          errors: list[DataError] | None = None) -> Iterator[tuple[int, Record]]:
    """Stream (line number, typed record). With ``on_error="skip"`` bad lines go to ``errors`` instead."""
    for n, (lineno, line) in enumerate(iter_lines(path)):
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            err = _line_error(path, lineno, line, n == 0, json_problem(line, e))
        else:
            problems = check_record(obj, line)
            if not problems:
                yield lineno, Record.from_dict(obj)
                continue
            first = problems[0]
            err = _line_error(path, lineno, line, n == 0, first.message, first.field)
        if on_error == "raise":
            raise err
        if errors is not None:
            errors.append(err)


def read_records(path: str | os.PathLike, *, on_error: Literal["raise", "skip"] = "raise",
                 errors: list[DataError] | None = None) -> Iterator[Record]:
    """Stream typed records; the first bad line raises :class:`DataError` naming file, line and field."""
    for _, record in read_numbered_records(path, on_error=on_error, errors=errors):
        yield record


def check_writable(path: str | os.PathLike, *, option: str | None = None, folder: bool = False,
                   hint: str | None = None, access: bool = True) -> None:
    """Refuse, before any work is done, a ``path`` where a file (with ``folder``: a folder) cannot be
    written: the other kind already there, a file where a folder above it should be, or (with
    ``access``) a nearest existing folder this process cannot write in. Found at the end, when the output
    is written, the whole run would be lost. The error starts with ``option`` and the path (a
    :class:`ConfigError`), or without one names the path (a :class:`DataError`); ``hint`` replaces what
    it says to do when the path is the other kind."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise _unwritable(path, option, "a file, where a folder is written; "
                          f"{hint or 'give a folder name, or remove the file'}")
    if not folder and path.is_dir():
        raise _unwritable(path, option, f"a folder, where a file is written; {hint or 'give a file name'}")
    anchor, is_dir = _nearest_existing(path.absolute() if folder else path.absolute().parent)
    if not is_dir:
        raise _unwritable(path, option, f"{anchor} is a file, not a folder")
    if access and not os.access(anchor, os.W_OK | os.X_OK):
        raise _unwritable(path, option, f"cannot write in {anchor} (permission denied)")


def _nearest_existing(path: Path) -> tuple[Path, bool]:
    """The nearest of ``path`` and the folders above it that exists, and whether it is a folder. The path
    is not normalised: ``file/../x`` stops at ``file``, as the OS does."""
    places = (path, *path.parents)
    for place in places:
        try:
            return place, stat.S_ISDIR(os.stat(place).st_mode)
        except OSError:  # not there, or a file on the way (ENOTDIR)
            continue
    return places[-1], True  # not even the root could be read: the write will say why


def _unwritable(path: Path, option: str | None, problem: str) -> ReallodError:
    if option is None:
        return DataError(problem, path=str(path))
    return ConfigError(f"{option} {path}: {problem}")


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """The same path once resolved, or the same file under two names (a link): writing ``a`` replaces ``b``."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def written_over(path: str | os.PathLike, named: Mapping[str, str | os.PathLike | None],
                 images: str | os.PathLike | None = None) -> str | None:
    """What writing ``path`` replaces: one of ``named`` (what it is → path), or an image of the image root
    ``images`` (by its extension: an earlier output kept beside the images is no input); None: nothing."""
    path = Path(path)
    for what, other in named.items():
        if other is not None and same_file(path, other):
            return f"{what} ({other})"
    if images is not None and path.suffix.lower() in _image_extensions() and path.is_file() \
            and in_folder(path, Path(images)):
        return f"an image of the image root --images {images}"
    return None


def in_folder(path: Path, folder: Path) -> bool:
    """Whether ``path`` names an entry under ``folder``, as written or with its folders resolved. Its own
    name is not followed: writing replaces a link there, wherever it points (an image root of links)."""
    entry = path.absolute().parent.resolve() / path.name
    return (entry.is_relative_to(folder.resolve())
            or Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder)))


def _image_extensions() -> dict[str, str]:
    from PIL import Image

    return Image.registered_extensions()


class AtomicOutput:
    """An output that :meth:`close` puts in place and :meth:`abort` drops. In a ``with`` block it is
    closed when the block ends and aborted when it raises: an error never leaves a partial output."""

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def raise_with_path(e: OSError, path: str | os.PathLike | None) -> NoReturn:
    """Raise ``e`` again, naming ``path`` when it names no file: a write or fsync that fails (a full
    disk) gives the OS's reason without the output it was for, and the user must know which disk to free."""
    if path is None or e.filename is not None or e.errno is None:
        raise e
    raise OSError(e.errno, e.strerror, os.fspath(path)) from e  # the errno's subclass, as the OS's own


class AtomicWriter(AtomicOutput):
    """Binary writer that appears at ``path`` only after :meth:`close` succeeds. Its write errors name
    ``path``.

    A pipe or a device there (``/dev/stdout``, a FIFO, bash's ``>(gzip > x.gz)``: :func:`writes_through`)
    is written through, as it is: a file put in its place would replace the device node (as root) and
    leave its reader with nothing. Such an output cannot be taken back: what was written before an error
    stays written."""

    def __init__(self, path: str | os.PathLike, *, compresslevel: int = 6) -> None:
        self.path = Path(path)
        self._tmp: Path | None = None
        if writes_through(self.path):
            try:
                self._raw = open(self.path, "wb", buffering=_BUFFER)  # noqa: SIM115 - closed by close/abort
            except OSError as e:
                raise_with_path(e, self.path)
        else:
            # a folder there is else found only by the rename at the end, the output left in a hidden file;
            # permission is the OS's to refuse, as the OSError the writers' callers handle
            check_writable(self.path, access=False)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            mode = _replaced_mode(self.path)
            try:
                fd, self._tmp = _create_beside(self.path)
            except OSError as e:  # it names the hidden temporary file: the user knows the output
                folder = os.path.dirname(self.path) or "."
                raise OSError(e.errno, f"cannot write in {folder} ({e.strerror})", os.fspath(self.path)) from e
            if mode is not None:
                os.fchmod(fd, mode)
            self._raw = os.fdopen(fd, "wb", buffering=_BUFFER)
        self._out: IO[bytes] = (
            gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=compresslevel, mtime=0)
            if wants_gzip(self.path) else self._raw
        )
        self.closed = self.finished = False

    def write(self, data: bytes) -> None:
        try:
            self._out.write(data)
        except OSError as e:
            raise_with_path(e, self.path)

    def finish(self) -> None:
        """Write out and fsync everything, still under the temporary name: :meth:`close` then only
        renames. Outputs that belong together (``split``'s train and val) are all finished before any
        is put in place, so a full disk never leaves a new one beside an old one."""
        if self.finished or self.closed:
            return
        try:
            if self._out is not self._raw:
                self._out.close()
            self._raw.flush()
            if self._tmp is not None:  # a pipe cannot be synced
                os.fsync(self._raw.fileno())
            self._raw.close()
        except OSError as e:  # disk full: no hidden temporary file stays
            self.abort()
            raise_with_path(e, self.path)
        except BaseException:
            self.abort()
            raise
        self.finished = True

    def close(self) -> None:
        if self.closed:
            return
        self.finish()
        try:
            if self._tmp is not None:
                os.replace(self._tmp, self.path)
        except BaseException:  # the target became a folder: no hidden temporary file stays
            self.abort()
            raise
        self.closed = True

    def abort(self) -> None:
        """Drop everything written; the target keeps whatever it held before."""
        if self.closed:
            return
        try:
            with contextlib.suppress(OSError):  # its flush fails again on a full disk: the first error says it
                self._raw.close()
        finally:
            if self._tmp is not None:
                self._tmp.unlink(missing_ok=True)
            self.closed = True


class JsonlWriter(AtomicWriter):
    """Atomic JSONL writer for records (written canonical) or plain dicts; counts what it wrote."""

    def __init__(self, path: str | os.PathLike, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.count = 0

    def write_record(self, record: Record | dict[str, Any]) -> None:
        obj = record.to_dict() if isinstance(record, Record) else record
        self.write(orjson.dumps(obj) + b"\n")
        self.count += 1


def write_records(path: str | os.PathLike, records: Iterable[Record | dict[str, Any]]) -> int:
    """Write all records atomically; returns how many."""
    with JsonlWriter(path) as w:
        for r in records:
            w.write_record(r)
    return w.count


@contextmanager
def atomic_text(path: str | os.PathLike) -> Iterator[IO[str]]:
    """Text file written atomically (JSON reports, Markdown, COCO json)."""
    with AtomicWriter(path) as w:
        text = io.TextIOWrapper(w._out, encoding="utf-8", write_through=True)
        try:
            yield text
        finally:
            text.detach()
