"""Pieces shared by the Real-Data converters.

The single-document formats (COCO, OmniLabel) are written in constant memory by
:class:`JsonSectionsWriter`: each list-valued section (``images``, ``annotations``...) is filled as
records stream past, the later sections spooled to temporary files beside the output, and the whole
document appears at its path only when complete.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from reallod.data.io import AtomicOutput, AtomicWriter, raise_with_path, read_numbered_records
from reallod.data.records import TRAINING_SOURCES, Pair, Record
from reallod.data.schema import text_key
from reallod.errors import ConfigError, DataError


@dataclass(slots=True)
class ConvertStats:
    """What a conversion read and wrote, for the one-line summary the CLI prints."""

    records_in: int = 0
    records_out: int = 0
    items_out: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)
    # item (an image id, a file name) → reason → n; kept only when given (the data engine's shards
    # count their own images' skips), None otherwise: a dict per image of a large dataset costs memory
    skipped_by_item: dict[Any, dict[str, int]] | None = None

    def skip(self, reason: str, n: int = 1, *, item: Any = None) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n
        if self.skipped_by_item is not None and item is not None:
            reasons = self.skipped_by_item.setdefault(item, {})
            reasons[reason] = reasons.get(reason, 0) + n

    def note(self, what: str, n: int = 1) -> None:
        self.notes[what] = self.notes.get(what, 0) + n

    def summary(self) -> str:
        parts = [f"{self.records_in} records read", f"{self.records_out} written"]
        parts += [f"{n} {name}" for name, n in self.items_out.items()]
        text = ", ".join(parts)
        if self.skipped:
            text += "; skipped: " + ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
        if self.notes:
            text += "; " + ", ".join(f"{n} {what}" for what, n in sorted(self.notes.items()))
        return text


class EmptyRunError(DataError):
    """A run that read no record, would write nothing, or could not read its input to the end: nothing
    was written, and what was at the output path before is still there."""


def require_records(records_in: int, src: str | os.PathLike | Sequence[str | os.PathLike]) -> None:
    """Refuse a run that read no record (an empty file, only blank lines, the wrong file)."""
    if records_in:
        return
    if not isinstance(src, str | os.PathLike) and len(src) == 1:
        src = src[0]
    if isinstance(src, str | os.PathLike):
        raise EmptyRunError("no Real-Data record in this file (empty, or only blank lines); nothing written",
                            path=str(src))
    raise EmptyRunError(f"no Real-Data record in {', '.join(map(str, src))} (empty, or only blank lines); "
                        "nothing written")


def require_output(stats: ConvertStats, src: str | os.PathLike, what: str) -> None:
    """Refuse a run whose records all were skipped: an empty output is never what was asked for."""
    require_records(stats.records_in, src)
    if stats.records_out:
        return
    why = ", ".join(f"{n} {reason}" for reason, n in sorted(stats.skipped.items())) or "nothing matched"
    raise EmptyRunError(f"{stats.records_in} records read but none gave {what} ({why}); nothing written",
                        path=str(src))


def refuse_same_file(src: str | os.PathLike, dst: str | os.PathLike,
                     would: str = "converting would replace the input with another format") -> None:
    """Refuse an output that is the input: a converter writes another format, a filter a part of it, so
    what the input held would be lost (say, by ``would``, how)."""
    try:  # the same file under any name: a relative path, a symlink, a hard link
        same = os.path.samefile(src, dst)
    except OSError:  # either one does not exist: no input to lose
        same = False
    if same:
        raise ConfigError(f"output {dst} is the input file {src}: {would}; give another output path")


def _source_key(name: str) -> str:
    return name.strip().casefold().replace("-", "_").replace(" ", "_")


class SourceCheck:
    """Refuses a ``--source`` that no record has, instead of writing an empty or partial output.

    Files may hold sources of their own (the format allows any name), so what counts is what the
    records read hold. A near-miss of a standard name (``vlm-short``, ``VLM_Short``) is refused before
    any record is read; any other name is checked when the input has been read.
    """

    def __init__(self, sources: Sequence[str] | None, *, also: Iterable[str] = ()) -> None:
        self.wanted = list(dict.fromkeys(sources or ()))
        self.also = set(also)  # sources the command makes itself (e.g. ``category`` for ODVG)
        self.seen: set[str] = set()
        for name in self.wanted:
            if name in TRAINING_SOURCES or name in self.also:
                continue
            near = [s for s in TRAINING_SOURCES if _source_key(s) == _source_key(name)]
            if near:
                raise ConfigError(f"--source {name}: no such source; did you mean {near[0]}? (the sources of "
                                  f"Real-Data are {', '.join(TRAINING_SOURCES)}, and a file may hold its own)")

    def see(self, record: Record) -> None:
        if self.wanted:
            self.seen.update(record.pairs)

    def check(self, path: str | os.PathLike | Sequence[str | os.PathLike], *,
              outcome: str = "nothing written") -> None:
        """After the whole input was read: every wanted source must have appeared in some record."""
        missing = [s for s in self.wanted if s not in self.seen and s not in self.also]
        if not missing:
            return
        where = str(path) if isinstance(path, str | os.PathLike) else ", ".join(map(str, path))
        seen = ", ".join(sorted(self.seen)) or "none"
        hints = []
        for name in missing:
            others = sorted((self.seen | set(TRAINING_SOURCES)) - {name})  # a standard source the file lacks is no typo
            close = difflib.get_close_matches(name, others, n=1, cutoff=0.6)
            if close:
                hints.append(f"{name} → {close[0]}?")
        raise DataError(f"--source {', '.join(missing)}: no record read has "
                        f"{'this source' if len(missing) == 1 else 'these sources'} (sources in {where}: {seen}; "
                        f"Real-Data's standard ones: {', '.join(TRAINING_SOURCES)})"
                        + (f"; did you mean {' '.join(hints)}" if hints else "") + f"; {outcome}")


def selected_pairs(record: Record, sources: Sequence[str] | None) -> Iterator[tuple[str, Pair]]:
    """(source, pair) for the chosen sources (all when ``sources`` is empty), in record order."""
    wanted = set(sources) if sources else None
    for source, items in record.pairs.items():
        if wanted is None or source in wanted:
            for pair in items:
                yield source, pair


def unique_texts(texts: Iterable[str]) -> list[str]:
    """Non-empty texts, first spelling kept, duplicates (by :func:`text_key`) dropped."""
    seen: set[str] = set()
    out = []
    for t in texts:
        k = text_key(t)
        if k and k not in seen:
            seen.add(k)
            out.append(" ".join(t.split()))
    return out


def xyxy_to_xywh(box: Sequence[float]) -> list[float]:
    """xywh at 3 decimals; a box with area keeps it (a zero-width ground-truth box could never be matched)."""
    x1, y1, x2, y2 = box
    x, w = _span(x1, x2)
    y, h = _span(y1, y2)
    return [x, y, w, h]


def _span(a: float, b: float) -> tuple[float | int, float | int]:
    """Start and length of [a, b] with the ends rounded to 3 decimals.

    When both ends round to the same value ``r`` though ``b > a``, the span is the 0.001 step on the
    side of ``r`` where ``a`` lies: it still overlaps [a, b] and stays inside an image that held it.
    """
    lo, hi = round(float(a), 3), round(float(b), 3)
    if hi <= lo and a < b:
        lo, hi = (lo - 0.001, lo) if a < lo else (lo, lo + 0.001)
    return _num(lo), _num(hi - lo)


def _num(v: float) -> float | int:
    """Integral floats are written as ints: smaller files, identical values."""
    return int(v) if float(v).is_integer() else round(float(v), 3)


class JsonSectionsWriter(AtomicOutput):
    """One JSON object ``{header..., "a": [...], "b": [...]}`` written atomically in constant memory.

    Items of the first section go straight to the output; the others are spooled to unnamed
    temporary files in the output's folder and copied in at :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike, sections: Sequence[str],
                 header: dict[str, Any] | None = None) -> None:
        if not sections:
            raise ValueError("at least one section")
        self.path = Path(path)
        self.sections = list(sections)
        self.counts = dict.fromkeys(self.sections, 0)
        self._out = AtomicWriter(self.path)
        self._spools: dict[str, IO[bytes]] = {}
        try:
            head = orjson.dumps(header or {})[:-1]  # "{...}" without the closing brace
            self._out.write(head + (b"," if header else b"") + orjson.dumps(self.sections[0]) + b":[")
            for name in self.sections[1:]:
                self._spools[name] = tempfile.TemporaryFile(  # noqa: SIM115 - closed in close()/abort()
                    dir=self.path.parent, prefix=f".{self.path.name}.")
        except BaseException:
            self.abort()
            raise
        self.closed = False

    def add(self, section: str, item: Any) -> None:
        sink = self._spools.get(section)
        if sink is None and section != self.sections[0]:
            raise KeyError(f"unknown section {section!r}")
        data = (b"," if self.counts[section] else b"") + orjson.dumps(item)
        try:  # a spool fills the output's disk as the output does: the error names the output
            (sink or self._out).write(data)
        except OSError as e:
            raise_with_path(e, self.path)
        self.counts[section] += 1

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._out.write(b"]")
            for name in self.sections[1:]:
                spool = self._spools[name]
                self._out.write(b"," + orjson.dumps(name) + b":[")
                try:
                    spool.seek(0)  # flushes what the spool still buffers
                except OSError as e:
                    raise_with_path(e, self.path)
                shutil.copyfileobj(spool, _Sink(self._out), 1 << 20)
                self._out.write(b"]")
            self._out.write(b"}\n")
            self._out.close()
        except BaseException:
            self.abort()
            raise
        finally:
            self._close_spools()
        self.closed = True

    def abort(self) -> None:
        """Drop everything; whatever was at the path before stays there."""
        self._out.abort()
        self._close_spools()
        self.closed = True

    def _close_spools(self) -> None:
        """Drop the spools (unnamed: nothing stays on disk). A flush that fails again on a full disk is
        not the error to report: the one that stopped the writer is."""
        for spool in self._spools.values():
            with contextlib.suppress(OSError):
                spool.close()


class _Sink:
    """File-like adapter so ``shutil.copyfileobj`` can write into an :class:`AtomicWriter`."""

    def __init__(self, writer: AtomicWriter) -> None:
        self.write = writer.write


def add_image_records(src: str | os.PathLike, out: JsonSectionsWriter,
                      convert: Callable[[Record, dict[str, int]], dict[str, list[Any]] | None], *,
                      check: SourceCheck, stats: ConvertStats, what: str) -> None:
    """Stream the records of ``src`` into ``out``, whose first section holds one image per record.

    ``convert(record, next_ids)`` gives a record's items by section (``next_ids``: the id the next item
    of each section gets, from 1), or None when the record has nothing of the chosen sources. Records
    are counted in ``stats`` and shown to ``check``; then a ``--source`` that no record has, or a run
    that wrote no image (``what`` names one), is refused: raised inside ``out``'s ``with`` block, nothing
    is written. An image given by two records is refused: listed once, it would have only one record's
    objects, and the other's would be unannotated background in it (``data merge`` combines them).
    """
    first_line: dict[str, int] = {}
    for lineno, record in read_numbered_records(src):
        if (first := first_line.setdefault(record.filename, lineno)) != lineno:
            raise DataError(f"{record.filename!r} is also the image of line {first}: the json lists each image "
                            "once, with all its objects, so one record's objects would be unannotated background "
                            f"in the other's; combine them first: reallod data merge {src} -o merged.jsonl",
                            path=str(src), line=lineno)
        stats.records_in += 1
        check.see(record)
        items = convert(record, {name: n + 1 for name, n in out.counts.items()})
        if items is None:
            stats.skip("images with no pair of the chosen sources")
            continue
        for section, values in items.items():
            for item in values:
                out.add(section, item)
    stats.records_out = out.counts[out.sections[0]]
    check.check(src)  # raising here drops the output: an earlier file at dst stays
    require_output(stats, src, what)
