"""Pieces shared by the Real-Data converters.

The single-document formats (COCO, OmniLabel) are written in constant memory by
:class:`JsonSectionsWriter`: each list-valued section (``images``, ``annotations``...) is filled as
records stream past, the later sections spooled to temporary files beside the output, and the whole
document appears at its path only when complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from reallod.data.io import AtomicWriter
from reallod.data.records import Pair, Record


@dataclass(slots=True)
class ConvertStats:
    """What a conversion read and wrote, for the one-line summary the CLI prints."""

    records_in: int = 0
    records_out: int = 0
    items_out: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n

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


def selected_pairs(record: Record, sources: Sequence[str] | None) -> Iterator[tuple[str, Pair]]:
    """(source, pair) for the chosen sources (all when ``sources`` is empty), in record order."""
    wanted = set(sources) if sources else None
    for source, items in record.pairs.items():
        if wanted is None or source in wanted:
            for pair in items:
                yield source, pair


def text_key(text: str) -> str:
    """How two expressions are compared: case and surrounding space do not make them different."""
    return " ".join(text.split()).casefold()


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
    x1, y1, x2, y2 = box
    return [_num(x1), _num(y1), _num(x2 - x1), _num(y2 - y1)]


def _num(v: float) -> float | int:
    """Integral floats are written as ints: smaller files, identical values."""
    return int(v) if float(v).is_integer() else round(float(v), 3)


class JsonSectionsWriter:
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
        (sink or self._out).write(data)
        self.counts[section] += 1

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._out.write(b"]")
            for name in self.sections[1:]:
                spool = self._spools[name]
                self._out.write(b"," + orjson.dumps(name) + b":[")
                spool.seek(0)
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
        for spool in self._spools.values():
            spool.close()

    def __enter__(self) -> JsonSectionsWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class _Sink:
    """File-like adapter so ``shutil.copyfileobj`` can write into an :class:`AtomicWriter`."""

    def __init__(self, writer: AtomicWriter) -> None:
        self.write = writer.write
